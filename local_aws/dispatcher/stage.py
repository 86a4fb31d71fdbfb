"""A Chalice stage as Lambda runs it: the app's name, its functions' environment, timeout and memory."""

from __future__ import annotations

from dataclasses import dataclass

ACCOUNT = "123456789012"  # moto's default account; the local SageMaker uses it too


@dataclass(frozen=True)
class Stage:
    name: str
    app_name: str
    environment: dict[str, str]
    lambda_timeout: int
    lambda_memory_size: int

    @property
    def region(self) -> str:
        return self.environment.get("AWS_REGION") or self.environment.get("AWS_DEFAULT_REGION") or "us-east-1"

    def function_name(self, handler: str) -> str:
        """What Chalice names a handler's Lambda function: <app>-<stage>-<handler>."""
        return f"{self.app_name}-{self.name}-{handler}"
