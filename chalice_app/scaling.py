"""How far things scale: the Lambdas' concurrency on the queues, and the endpoint's instances.

Pure: the numbers and the Application Auto Scaling requests; deployment.py sends them.

- Training data: arrivals all transact on one burst item, so more concurrent batches only add
  transaction conflicts (and dead letters): 2, the least Lambda's ScalingConfig allows.
- Incoming: each Lambda invokes the endpoint one request at a time, so its concurrency is the
  endpoint's concurrent requests. An ml.m5.large (2 vCPUs) runs about two batched forward passes
  at once, so the queue may run two batches per instance the endpoint can scale to.
- Endpoint: target tracking on SageMakerVariantInvocationsPerInstance (invocations per instance
  per minute), between 1 instance and ENDPOINT_MAX_INSTANCES. AWS's rule of thumb is half of
  what an instance sustains: a 64-image request takes about 1 s on two vCPUs, so an instance
  sustains about 60 a minute, and the default target is 30 (TARGET_INVOCATIONS_PER_INSTANCE).
"""

from __future__ import annotations

from typing import Any

from .config import Settings
from .sagemaker_requests import VARIANT_NAME

# Lambda's ScalingConfig.MaximumConcurrency: from 2 to 1000.
MIN_MAXIMUM_CONCURRENCY = 2
TRAINING_DATA_CONCURRENCY = MIN_MAXIMUM_CONCURRENCY
REQUESTS_PER_INSTANCE = 2
NAMESPACE = "sagemaker"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
# Scale out within a minute of a burst of images; scale in only after 5 quiet minutes (a new
# instance takes minutes to start: dropping one too early costs more than keeping it).
SCALE_OUT_COOLDOWN_SECONDS = 60
SCALE_IN_COOLDOWN_SECONDS = 300


def incoming_concurrency(max_instances: int) -> int:
    return max(MIN_MAXIMUM_CONCURRENCY, REQUESTS_PER_INSTANCE * max_instances)


def resource_id(settings: Settings) -> str:
    return f"endpoint/{settings.endpoint_name}/variant/{VARIANT_NAME}"


def scalable_target_request(settings: Settings) -> dict[str, Any]:
    """RegisterScalableTarget: registers the variant, or updates its bounds (a repeat is harmless)."""
    return {"ServiceNamespace": NAMESPACE, "ResourceId": resource_id(settings), "ScalableDimension": DIMENSION,
            "MinCapacity": 1, "MaxCapacity": settings.endpoint_max_instances}


def scaling_policy_request(settings: Settings) -> dict[str, Any]:
    """PutScalingPolicy: creates the policy, or replaces the one of the same name."""
    return {
        "PolicyName": f"{settings.endpoint_name}-invocations-per-instance",
        "ServiceNamespace": NAMESPACE, "ResourceId": resource_id(settings), "ScalableDimension": DIMENSION,
        "PolicyType": "TargetTrackingScaling",
        "TargetTrackingScalingPolicyConfiguration": {
            "TargetValue": settings.target_invocations_per_instance,
            "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
            "ScaleOutCooldown": SCALE_OUT_COOLDOWN_SECONDS,
            "ScaleInCooldown": SCALE_IN_COOLDOWN_SECONDS,
        },
    }
