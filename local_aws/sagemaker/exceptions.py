"""AWS's SageMaker error codes, so botocore raises the same exceptions as on AWS."""

from __future__ import annotations


class SageMakerError(Exception):
    code = "InternalFailure"
    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ValidationException(SageMakerError):
    code = "ValidationException"
    status = 400


class ValidationError(SageMakerError):
    """The runtime's spelling (InvokeEndpoint answers ValidationError, the control plane ValidationException)."""

    code = "ValidationError"
    status = 400


class ResourceNotFound(SageMakerError):
    code = "ResourceNotFound"
    status = 400


class ResourceInUse(SageMakerError):
    code = "ResourceInUse"
    status = 400


class ResourceLimitExceeded(SageMakerError):
    code = "ResourceLimitExceeded"
    status = 400


class UnknownOperationException(SageMakerError):
    code = "UnknownOperationException"
    status = 400


class ServiceUnavailable(SageMakerError):
    """The runtime's answer while the instance behind an endpoint cannot take the request (a retry may succeed)."""

    code = "ServiceUnavailable"
    status = 503


class ModelError(SageMakerError):
    """The runtime's answer when the model container itself answers with an error."""

    code = "ModelError"
    status = 424

    def __init__(self, message: str, original_status: int, original_message: str, log_stream_arn: str) -> None:
        super().__init__(message)
        self.original_status = original_status
        self.original_message = original_message
        self.log_stream_arn = log_stream_arn
