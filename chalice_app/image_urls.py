"""Short-lived URLs to fetch stored images, for the review queue and the predictions' thumbnails.
Signed locally with the caller's credentials (no request to S3), under the policy's s3:GetObject
on incoming/; valid REVIEW_URL_SECONDS, or as long as the Lambda role's session, whichever ends first."""

from __future__ import annotations

from typing import Any

from . import aws
from .config import settings


def with_image_urls(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each item (with its `image_key`) given `url` and `expires_in`; at most a page's worth."""
    config = settings()
    s3 = aws.client("s3")
    for item in items:
        item["url"] = s3.generate_presigned_url("get_object", Params={"Bucket": config.bucket, "Key": item["image_key"]},
                                                ExpiresIn=config.review_url_seconds)
        item["expires_in"] = config.review_url_seconds
    return items
