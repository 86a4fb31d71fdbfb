"""What the dispatcher wires, read from the Chalice app's own declarations and nothing else.

`on_sqs_message` gives a queue, a batch size and a batching window; `on_cw_event` an
event pattern; `schedule` a rate. The queues themselves (visibility timeout, DLQ,
maxReceiveCount) are the infra template's; EventBridge's delivery to a Lambda
(asynchronous, retried, then dead-lettered) is played by a queue per rule that only
the dispatcher uses, defined here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from chalice.app import (Chalice, CloudWatchEventConfig, Cron, Rate, ScheduledEventConfig, SQSEventConfig)

from .stage import Stage

# EventBridge retries a failed asynchronous invocation twice, then gives up (here: to a DLQ).
EVENT_MAX_RECEIVES = 3
EVENT_RETRY_SECONDS = 30
_RATE_SECONDS = {Rate.MINUTES: 60, Rate.HOURS: 3600, Rate.DAYS: 86400}


@dataclass(frozen=True)
class SqsSource:
    handler: str
    queue: str
    batch_size: int
    batching_window: float
    concurrency: int


@dataclass(frozen=True)
class EventSource:
    handler: str
    rule_name: str
    pattern: dict[str, Any]
    queue: str

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.queue}-dlq"

    @property
    def pattern_json(self) -> str:
        return json.dumps(self.pattern, sort_keys=True)


@dataclass(frozen=True)
class ScheduleSource:
    handler: str
    expression: str
    seconds: float


@dataclass(frozen=True)
class Wiring:
    sqs: list[SqsSource]
    events: list[EventSource]
    schedules: list[ScheduleSource]


def rate_seconds(expression: Rate) -> float:
    return expression.value * _RATE_SECONDS[expression.unit]


def wiring_from_app(app: Chalice, stage: Stage, *, default_concurrency: int = 2,
                    schedule_seconds: float | None = None) -> Wiring:
    """The event sources Chalice registered, as the dispatcher runs them.

    `default_concurrency` is how many batches of one queue run at once when the app
    does not cap it (Lambda's SQS poller scales out; 2 is its minimum cap).
    `schedule_seconds` replaces every rate (a demo cannot wait a minute per check).
    """
    sqs, events, schedules = [], [], []
    for source in app.event_sources:
        if isinstance(source, SQSEventConfig):
            sqs.append(SqsSource(source.name, source.queue, source.batch_size,
                                 float(source.maximum_batching_window_in_seconds or 0),
                                 source.maximum_concurrency or default_concurrency))
        elif isinstance(source, CloudWatchEventConfig):
            function = stage.function_name(source.name)
            events.append(EventSource(source.name, f"{function}-event", source.event_pattern, f"{function}-events"))
        elif isinstance(source, ScheduledEventConfig):
            expression = source.schedule_expression
            if isinstance(expression, Cron) or isinstance(expression, str):
                raise ValueError(f"{source.name}: only Rate schedules run locally, not {expression!r}")
            seconds = schedule_seconds if schedule_seconds else rate_seconds(expression)
            schedules.append(ScheduleSource(source.name, expression.to_string(), seconds))
        else:
            raise ValueError(f"{source.name}: event source {type(source).__name__} is not supported locally")
    return Wiring(sqs, events, schedules)
