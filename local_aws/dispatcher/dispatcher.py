"""The dispatcher: wires moto from the app's declarations and runs the handlers as Lambda would."""

from __future__ import annotations

import json
import threading
from collections import Counter
from typing import Any

from aws_lambda_powertools import Logger
from chalice.app import Chalice

from .lambda_shapes import context_for, failed_message_ids, scheduled_event, sqs_event
from .poller import QueuePoller
from .queues import ensure_queue, queue_arn
from .stage import ACCOUNT, Stage
from .wiring import EVENT_MAX_RECEIVES, EVENT_RETRY_SECONDS, EventSource, ScheduleSource, SqsSource, Wiring

logger = Logger(service="local-aws-dispatcher")

# moto 5.2 drops "account" from the event it delivers to an SQS target (its default input
# template lacks it; chalice's CloudWatchEvent needs it). This transformer restores the whole
# envelope, as EventBridge delivers it. moto turns the numeric <time> into ISO 8601.
_WHOLE_EVENT = {
    "InputPathsMap": {name: f"$.{name}" for name in ("id", "detail-type", "source", "account", "time", "region",
                                                     "resources", "detail")},
    "InputTemplate": ('{"version": "0", "id": "<id>", "detail-type": "<detail-type>", "source": "<source>", '
                      '"account": "<account>", "time": <time>, "region": "<region>", "resources": <resources>, '
                      '"detail": <detail>}'),
}


class Dispatcher:
    def __init__(self, app: Chalice, stage: Stage, session: Any, wiring: Wiring) -> None:
        self.app = app
        self.stage = stage
        self.session = session
        self.wiring = wiring
        self.invocations: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pollers: list[QueuePoller] = []

    # --- wiring ---------------------------------------------------------------------------

    def wire(self) -> None:
        """EventBridge rules with the app's exact patterns, each delivering to its own queue."""
        sqs, events = self.session.client("sqs"), self.session.client("events")
        for source in self.wiring.events:
            ensure_queue(sqs, source.dead_letter_queue, {})
            redrive = {"deadLetterTargetArn": queue_arn(self.stage.region, source.dead_letter_queue),
                       "maxReceiveCount": str(EVENT_MAX_RECEIVES)}
            ensure_queue(sqs, source.queue, {"VisibilityTimeout": str(EVENT_RETRY_SECONDS),
                                             "RedrivePolicy": json.dumps(redrive)})
            events.put_rule(Name=source.rule_name, EventPattern=source.pattern_json, State="ENABLED")
            events.put_targets(Rule=source.rule_name, Targets=[
                {"Id": "dispatcher", "Arn": queue_arn(self.stage.region, source.queue),
                 "InputTransformer": _WHOLE_EVENT}])

    # --- invocation -----------------------------------------------------------------------

    def _handler(self, name: str):
        return self.app.handler_map[name]

    def _call(self, name: str, event: dict[str, Any]) -> Any:
        self.invocations[name] += 1
        try:
            return self._handler(name)(event, context_for(self.stage, name))
        except Exception:
            self.errors[name] += 1
            raise

    def _sqs_invoke(self, source: SqsSource, arn: str):
        def invoke(messages: list[dict[str, Any]]) -> set[str] | None:
            return failed_message_ids(self._call(source.handler, sqs_event(messages, arn, self.stage.region)))
        return invoke

    def _event_invoke(self, source: EventSource):
        def invoke(messages: list[dict[str, Any]]) -> set[str] | None:
            failed = set()
            for message in messages:  # EventBridge invokes a function once per event
                try:
                    self._call(source.handler, json.loads(message["Body"]))
                except Exception:  # noqa: BLE001 - retried after EVENT_RETRY_SECONDS, then dead-lettered
                    logger.exception("event handler failed", handler=source.handler)
                    failed.add(message["MessageId"])
            return failed
        return invoke

    def _run_schedule(self, source: ScheduleSource) -> None:
        rule_arn = f"arn:aws:events:{self.stage.region}:{ACCOUNT}:rule/{self.stage.function_name(source.handler)}-event"
        while not self._stop.wait(source.seconds):
            try:
                self._call(source.handler, scheduled_event(rule_arn, self.stage.region))
            except Exception:  # noqa: BLE001 - the next tick runs again, as a schedule does
                logger.exception("scheduled handler failed", handler=source.handler)

    # --- lifecycle ------------------------------------------------------------------------

    def _poller(self, queue: str, *, batch_size: int, window: float, invoke, name: str) -> QueuePoller:
        sqs = self.session.client("sqs")
        url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
        visibility = float(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["VisibilityTimeout"])
                           ["Attributes"]["VisibilityTimeout"])
        return QueuePoller(sqs, url, batch_size=batch_size, batching_window=window, invoke=invoke, name=name,
                           visibility_timeout=visibility)

    def start(self) -> None:
        for source in self.wiring.sqs:
            arn = queue_arn(self.stage.region, source.queue)
            for index in range(source.concurrency):
                self._pollers.append(self._poller(source.queue, batch_size=source.batch_size,
                                                  window=source.batching_window, name=f"{source.handler}#{index}",
                                                  invoke=self._sqs_invoke(source, arn)))
        for source in self.wiring.events:
            self._pollers.append(self._poller(source.queue, batch_size=1, window=0.0, name=source.handler,
                                              invoke=self._event_invoke(source)))
        for poller in self._pollers:
            self._spawn(poller.name, lambda p=poller: p.run(self._stop))
        for schedule in self.wiring.schedules:
            self._spawn(schedule.handler, lambda s=schedule: self._run_schedule(s))

    def _spawn(self, name: str, target) -> None:
        thread = threading.Thread(target=target, name=f"dispatcher-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self, timeout: float = 60.0) -> int:
        """Stop polling, let running invocations finish, hand back held messages; returns how many."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        released = 0
        for poller in self._pollers:
            try:
                released += poller.release()
            except Exception:  # noqa: BLE001 - moto may already be gone; messages then return by timeout
                logger.exception("release failed", poller=poller.name)
        return released
