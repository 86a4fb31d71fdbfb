"""InvokeEndpoint for a batch of images: the groups, the requests and the answers (pure functions).

One image travels as it is (`application/x-image`). Several travel in one
`application/json` body, `{"images": ["<base64>", ...]}`, which the endpoint's
`inference.py` decodes into one batched forward pass; its answer holds one row of
labels per image, in order:

    {"model_version": str, "num_classes": int,
     "predictions": [[{"label": str, "probability": float}, ...], ...per image],
     "embeddings": [[EMBEDDING_DIMS floats], ...per image]}

"embeddings" is there only when the request asks for it (every request here does, through
CustomAttributes) and the model has a drift reference (training/drift.py); an answer without it
still classifies, with no drift data for its images.

Groups keep each request under InvokeEndpoint's payload limit and the endpoint's own
limit of images per request (training.image_contract.MAX_IMAGES_PER_REQUEST).
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from training.drift import EMBEDDING_ATTRIBUTE, EMBEDDING_DIMS
from training.image_contract import MAX_IMAGES_PER_REQUEST

IMAGE_TYPE = "application/x-image"
JSON_TYPE = "application/json"
MAX_PAYLOAD_BYTES = 6 * 1024 * 1024  # InvokeEndpoint's request payload limit
_JSON_FRAME = len('{"images": []}')
# InvokeEndpoint's CustomAttributes (the X-Amzn-SageMaker-Custom-Attributes header, at most 1024
# ASCII characters, forwarded verbatim to the model): ask for each image's embedding summary.
CUSTOM_ATTRIBUTES = f"{EMBEDDING_ATTRIBUTE}=1"


def _json_cost(size: int) -> int:
    """Bytes an image of `size` bytes adds to the JSON body: base64, quotes, separator."""
    return 4 * ((size + 2) // 3) + 4


def groups(sizes: Sequence[int], max_bytes: int = MAX_PAYLOAD_BYTES,
           max_images: int = MAX_IMAGES_PER_REQUEST) -> list[list[int]]:
    """The images' indices, in order, packed into requests within the limits. An image too
    large to share a JSON body goes alone (as raw bytes, which it fits)."""
    packed: list[list[int]] = []
    current: list[int] = []
    used = _JSON_FRAME
    for index, size in enumerate(sizes):
        cost = _json_cost(size)
        if current and (len(current) == max_images or used + cost > max_bytes):
            packed.append(current)
            current, used = [], _JSON_FRAME
        current.append(index)
        used += cost
    if current:
        packed.append(current)
    return packed


def invoke_request(endpoint_name: str, images: Sequence[bytes]) -> dict[str, Any]:
    """InvokeEndpoint's parameters for these images."""
    common = {"EndpointName": endpoint_name, "Accept": JSON_TYPE, "CustomAttributes": CUSTOM_ATTRIBUTES}
    if len(images) == 1:
        return {**common, "ContentType": IMAGE_TYPE, "Body": images[0]}
    body = json.dumps({"images": [base64.b64encode(image).decode("ascii") for image in images]})
    return {**common, "ContentType": JSON_TYPE, "Body": body.encode()}


@dataclass(frozen=True)
class Answer:
    """The endpoint's answer for a group: per image its k most probable labels (most probable first)
    and its embedding summary (None where the answer has none), and the model version."""

    labels: list[list[dict[str, Any]]]
    embeddings: list[list[float] | None]
    model_version: str


def _embedding(row: Any) -> list[float] | None:
    """An embedding summary as the drift statistics take it; None for anything else (the image is
    still classified, without drift data)."""
    if not isinstance(row, list) or len(row) != EMBEDDING_DIMS:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in row):
        return None
    return [float(v) for v in row]


def read_answer(body: bytes, count: int, k: int) -> Answer:
    payload = json.loads(body)
    rows = payload["predictions"]
    if len(rows) != count:
        raise ValueError(f"the endpoint answered {len(rows)} predictions for {count} images")
    ranked = [sorted(row, key=lambda p: p["probability"], reverse=True)[:k] for row in rows]
    embeddings = payload.get("embeddings")
    if not isinstance(embeddings, list) or len(embeddings) != count:
        embeddings = [None] * count
    return Answer([[{"label": p["label"], "probability": float(p["probability"])} for p in row] for row in ranked],
                  [_embedding(row) for row in embeddings], payload["model_version"])


_TRACEBACK = "\nTraceback (most recent call last):"


def endpoint_message(original: str) -> str:
    """The endpoint's own words in the body of its error answer (a ModelError's OriginalMessage):
    `{"status", "error"}` from the local endpoint host, `{"code", "type", "message"}` from
    TorchServe, or SageMaker's inference toolkit's text (the message, then its traceback)."""
    try:
        document = json.loads(original)
    except ValueError:
        document = None
    if isinstance(document, dict):
        for field in ("error", "message"):
            if isinstance(document.get(field), str) and document[field].strip():
                return document[field].strip()
    return original.split(_TRACEBACK, 1)[0].strip() or original
