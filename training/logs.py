"""Structured logs for the training job, from the standard library alone.

SageMaker's framework images have no Powertools (nor Chalice): a log line here is one
JSON object on stdout, `{"level", "location", "message", "timestamp", "service", ...}`
with the `extra` keys at the top level, the shape Powertools gives the Lambda's lines,
so CloudWatch Logs Insights queries read both alike.
"""

from __future__ import annotations

import json
import logging
import os
import sys

SERVICE = "training"
# Attributes every LogRecord has: what is left over came from `extra`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "level": record.levelname,
            "location": f"{record.funcName}:{record.lineno}",
            "message": record.getMessage(),
            "timestamp": self.formatTime(record, "%Y-%m-%d %H:%M:%S") + f",{int(record.msecs):03d}",
            "service": self.service,
        }
        entry.update({key: value for key, value in vars(record).items() if key not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever sys.stdout is at the time (a job's log, a test's capture)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stdout

    @stream.setter
    def stream(self, _value) -> None:
        pass


def get_logger(name: str = SERVICE) -> logging.Logger:
    """`training` writes JSON lines to stdout; `training.<module>` loggers reach it by propagation."""
    root = logging.getLogger(SERVICE)
    if not any(isinstance(handler, _StdoutHandler) for handler in root.handlers):
        handler = _StdoutHandler()
        handler.setFormatter(JsonFormatter(SERVICE))
        root.addHandler(handler)
        root.setLevel(os.environ.get("LOG_LEVEL", "INFO").upper())
        root.propagate = False
    return logging.getLogger(name)
