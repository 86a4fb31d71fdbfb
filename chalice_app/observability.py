"""Powertools Logger, Metrics and Tracer, shared by every handler."""

from __future__ import annotations

from aws_lambda_powertools import Logger, Metrics, Tracer

SERVICE = "image-pipeline"

logger = Logger(service=SERVICE)
metrics = Metrics(namespace="ImagePipeline", service=SERVICE)
tracer = Tracer(service=SERVICE)
