"""One worker's view of the model: the artefact's own `code/inference.py`, loaded and batched.

As in SageMaker's container, the handler is imported from the artefact's `code/`
directory, with `code/` first on sys.path, so the modules it imports are the copies
that travelled with the weights.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from aws_lambda_powertools import Logger

from local_aws.endpoint_host.batching import DynamicBatcher

logger = Logger(service="endpoint-host")


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    content_type: str = "application/json"


def error_answer(status: int, message: str) -> Answer:
    return Answer(status, json.dumps({"status": status, "error": message}).encode())


def load_inference_module(model_dir: Path) -> ModuleType:
    code_dir = model_dir / "code"
    source = code_dir / "inference.py"
    if not source.exists():
        raise FileNotFoundError(f"the model artefact has no code/inference.py (model_fn, input_fn, predict_fn, "
                                f"output_fn) under {model_dir}")
    sys.path.insert(0, str(code_dir))
    spec = importlib.util.spec_from_file_location("inference", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["inference"] = module
    spec.loader.exec_module(module)
    return module


class Handler:
    """model_fn once; then input_fn → (batched) predict_fn → output_fn per request."""

    def __init__(self, model_dir: Path, *, max_batch_size: int = 1, max_batch_wait_ms: float = 0.0):
        self.module = load_inference_module(model_dir)
        self.model: Any = None
        # An optional step of the handler's own (inference.prepare_fn): preprocessing, run on the
        # request's thread so that it overlaps the batch being run. SageMaker's toolkit knows no such step.
        self._prepare = getattr(self.module, "prepare_fn", None)
        can_merge = hasattr(self.module, "merge_requests") and hasattr(self.module, "split_prediction")
        self.batcher: DynamicBatcher = DynamicBatcher(
            self._predict_merged if can_merge else self._predict_each,
            max_batch_size=max_batch_size if can_merge else 1,
            max_wait_ms=max_batch_wait_ms,
            size_of=lambda request: len(getattr(request, "images", ())),
            on_start=lambda: self._load(model_dir),  # the model lives on the thread that runs it
        )

    def _load(self, model_dir: Path) -> None:
        self.model = self.module.model_fn(str(model_dir))

    def _predict_merged(self, requests: Sequence[Any]) -> list[Any]:
        if len(requests) == 1:
            return [self.module.predict_fn(requests[0], self.model)]
        merged = self.module.predict_fn(self.module.merge_requests(requests), self.model)
        return self.module.split_prediction(merged, requests)

    def _predict_each(self, requests: Sequence[Any]) -> list[Any]:
        return [self.module.predict_fn(request, self.model) for request in requests]

    def invoke(self, body: bytes, content_type: str | None, accept: str | None,
               headers: Mapping[str, str]) -> Answer:
        """Answer one /invocations request; errors with a status become that status."""
        try:
            with self.batcher.arrival() as submit:
                request = self.module.input_fn(body, content_type, headers)
                if self._prepare is not None:  # preprocessing here overlaps the model thread's forward pass
                    request = self._prepare(request, self.model)
                prediction = submit(request)
            result = self.module.output_fn(prediction, accept)
        except Exception as error:  # noqa: BLE001 - every failure becomes an HTTP answer
            status = getattr(error, "status_code", None)
            if isinstance(status, int) and 400 <= status < 600:
                return error_answer(status, str(error))
            logger.error("inference failed", extra={"error": repr(error), "trace": traceback.format_exc()})
            return error_answer(500, f"inference failed: {error!r}")
        payload, answer_type = result if isinstance(result, tuple) else (result, accept or "application/json")
        return Answer(200, payload.encode() if isinstance(payload, str) else bytes(payload), answer_type)
