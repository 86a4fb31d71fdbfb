"""The dispatcher plays Lambda on one machine.

It reads the Chalice app's declarations (`on_sqs_message` queues and batch settings,
`on_cw_event` patterns, `schedule` rates) and nothing else, wires moto (EventBridge
rules with those exact patterns and SQS targets; the bucket notifications and
queues come from the infra template, see `local_aws.project.infra`), and invokes the
handlers in-process with Lambda's event shapes and semantics: batches, batching
window, visibility timeout, partial batch failures, retries, dead-letter queue.

    wiring = wiring_from_app(app, stage)
    dispatcher = Dispatcher(app, stage, boto3_session, wiring)
    dispatcher.wire(); dispatcher.start(); ...; dispatcher.stop()
"""

from .dispatcher import Dispatcher
from .wiring import EventSource, ScheduleSource, SqsSource, Wiring, wiring_from_app

__all__ = ["Dispatcher", "EventSource", "ScheduleSource", "SqsSource", "Wiring", "wiring_from_app"]
