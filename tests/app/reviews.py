"""What the review scenarios share: the endpoint's answers for a sure and an unsure image, and a label POSTed."""

from __future__ import annotations

import json

from .incoming import LABELS

UNSURE = (("3", 0.45), ("8", 0.35), ("5", 0.15), ("1", 0.05))  # top-1 below the default threshold 0.6
SURE = LABELS  # top-1 0.7
JSON = {"Content-Type": "application/json"}


def label(world, name: str, body) -> tuple[int, dict]:
    response = world.client.http.post(f"/review/{name}", headers=JSON, body=json.dumps(body))
    return response.status_code, response.json_body
