"""The thin edge to SageMaker: send a built request; a repeated create is a success."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from . import aws
from .observability import logger

# SageMaker answers a second create of the same name with ResourceInUse (jobs) or
# a ValidationException "Cannot create already existing ..." (models, configs).
_ALREADY = ("already existing", "already exists")


def create(operation: str, request: dict[str, Any]) -> bool:
    """Call `operation`; False when the resource already existed (a redelivered event)."""
    try:
        getattr(aws.client("sagemaker"), operation)(**request)
        return True
    except ClientError as error:
        code, message = aws.error_code(error), aws.error_message(error)
        if code == "ResourceInUse" or (code == "ValidationException" and any(s in message for s in _ALREADY)):
            logger.info("already created", extra={"operation": operation, "reason": message})
            return False
        raise


class Refused(Exception):
    """SageMaker refused a request for good (bad request, quota, permissions): retrying cannot help."""


_REFUSALS = {"ValidationException", "ResourceLimitExceeded", "AccessDeniedException", "ResourceNotFound"}


def create_or_refuse(operation: str, request: dict[str, Any]) -> bool:
    """`create`, with a permanent refusal raised as Refused (transient errors still raise ClientError)."""
    try:
        return create(operation, request)
    except ClientError as error:
        if aws.error_code(error) in _REFUSALS:
            raise Refused(f"{operation} was refused: {aws.error_message(error)}") from error
        raise


def delete_or_refuse(operation: str, **request: Any) -> None:
    """Delete; a resource that is gone already counts as deleted (a repeated event), a permanent
    refusal is raised as Refused (transient errors still raise ClientError)."""
    try:
        getattr(aws.client("sagemaker"), operation)(**request)
    except ClientError as error:
        code, message = aws.error_code(error), aws.error_message(error)
        if code == "ValidationException" and "Could not find" in message:
            logger.info("already deleted", extra={"operation": operation, "reason": message})
            return
        if code in _REFUSALS:
            raise Refused(f"{operation} was refused: {message}") from error
        raise


def describe_endpoint(name: str) -> dict[str, Any] | None:
    try:
        return aws.client("sagemaker").describe_endpoint(EndpointName=name)
    except ClientError as error:
        if aws.error_code(error) == "ValidationException" and "Could not find" in aws.error_message(error):
            return None
        raise


def delete_quietly(operation: str, **request: Any) -> None:
    """Clean-up that must not fail the handler: the resource may be gone already."""
    try:
        getattr(aws.client("sagemaker"), operation)(**request)
    except ClientError as error:
        logger.warning("clean-up failed", extra={"operation": operation, "reason": aws.error_message(error)})
