"""The wire: SageMaker's JSON 1.1 control plane and the runtime's InvokeEndpoint.

Requests are checked against botocore's own service model (types, required members,
lengths, ranges and patterns), so what AWS would reject is rejected here with
the same error code; answers are JSON with timestamps as epoch seconds, as botocore
parses them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import botocore.session
from aws_lambda_powertools import Logger
from botocore.model import OperationModel, Shape, StructureShape
from botocore.validate import ParamValidator

from .exceptions import ModelError, SageMakerError, UnknownOperationException, ValidationException
from .backend import SageMakerBackend

logger = Logger(service="local-sagemaker")

TARGET_PREFIX = "SageMaker."
JSON_11 = "application/x-amz-json-1.1"


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def operation_method(operation: str) -> str:
    """CreateHyperParameterTuningJob -> create_hyper_parameter_tuning_job."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", operation).lower()


def constraint_errors(params: dict[str, Any], shape: StructureShape) -> list[str]:
    """Top-level members against the constraints botocore's validator leaves out: string
    patterns and maximum values (it checks minimums only)."""
    errors = []
    for name, member in shape.members.items():
        value = params.get(name)
        label = name[0].lower() + name[1:]
        pattern = member.metadata.get("pattern")
        if isinstance(value, str) and pattern and not re.fullmatch(pattern.removeprefix("^").removesuffix("$"), value):
            errors.append(f"Value '{value}' at '{label}' failed to satisfy constraint: "
                          f"Member must satisfy regular expression pattern: {pattern}")
        maximum = member.metadata.get("max")
        if isinstance(value, int) and maximum is not None and value > maximum:
            errors.append(f"Value '{value}' at '{label}' failed to satisfy constraint: "
                          f"Member must have value less than or equal to {maximum}")
    return errors


def error_reply(error: SageMakerError) -> Reply:
    body: dict[str, Any] = {"__type": error.code, "message": error.message}
    if isinstance(error, ModelError):
        body.update(OriginalStatusCode=error.original_status, OriginalMessage=error.original_message,
                    LogStreamArn=error.log_stream_arn)
    return Reply(error.status, json.dumps(body).encode(),
                 {"Content-Type": JSON_11, "x-amzn-ErrorType": error.code})


class SageMakerResponses:
    def __init__(self, backend: SageMakerBackend) -> None:
        self.backend = backend
        self.model = botocore.session.get_session().get_service_model("sagemaker")
        self.validator = ParamValidator()

    def _operation(self, target: str) -> OperationModel:
        operation = target.removeprefix(TARGET_PREFIX)
        if not target.startswith(TARGET_PREFIX) or operation not in self.model.operation_names:
            raise UnknownOperationException(f"Unknown operation {target!r}")
        if not hasattr(self.backend, operation_method(operation)):
            raise UnknownOperationException(f"{operation} is not implemented by the local SageMaker")
        return self.model.operation_model(operation)

    def validate(self, operation: OperationModel, params: Any) -> None:
        shape: Shape | None = operation.input_shape
        if shape is None:
            return
        if not isinstance(params, dict):
            raise ValidationException("The request body must be a JSON object")
        report = self.validator.validate(params, shape)
        problems = [report.generate_report()] if report.has_errors() else []
        problems += constraint_errors(params, shape)  # type: ignore[arg-type]
        if problems:
            raise ValidationException("; ".join(problems))

    def control_plane(self, target: str, body: bytes) -> Reply:
        try:
            operation = self._operation(target)
            try:
                params = json.loads(body or b"{}")
            except ValueError as error:
                raise ValidationException(f"The request body is not JSON: {error}") from None
            self.validate(operation, params)
            answer = getattr(self.backend, operation_method(operation.name))(params)
            return Reply(200, json.dumps(answer).encode(), {"Content-Type": JSON_11})
        except SageMakerError as error:
            return error_reply(error)
        except Exception as error:  # noqa: BLE001 - an unexpected bug answers InternalFailure, not a dropped socket
            logger.exception("operation failed", target=target)
            return error_reply(SageMakerError(f"{type(error).__name__}: {error}"))

    def invoke_endpoint(self, name: str, body: bytes, headers: dict[str, str]) -> Reply:
        # Header names are case-insensitive: the WSGI layer hands X-Amzn-SageMaker-Custom-Attributes
        # over as X-Amzn-Sagemaker-Custom-Attributes, and a case-sensitive look-up dropped it.
        headers = {key.lower(): value for key, value in headers.items()}
        try:
            answer, content_type, variant = self.backend.invoke_endpoint(
                name, body, headers.get("content-type", "application/octet-stream"),
                headers.get("accept", "application/json"), headers.get("x-amzn-sagemaker-custom-attributes"))
            return Reply(200, answer, {"Content-Type": content_type, "x-Amzn-Invoked-Production-Variant": variant})
        except SageMakerError as error:
            return error_reply(error)
        except Exception as error:  # noqa: BLE001
            logger.exception("invocation failed", endpoint=name)
            return error_reply(SageMakerError(f"{type(error).__name__}: {error}"))
