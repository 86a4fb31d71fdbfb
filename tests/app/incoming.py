"""Incoming images classified through the handler, with the endpoint played by botocore's Stubber
(moto's runtime cannot take an image body): the endpoint's answers, the requests it expects, one
delivery of the queue, the prediction read back."""

from __future__ import annotations

import base64
import io
import json
from contextlib import contextmanager
from typing import Any

from botocore.response import StreamingBody
from botocore.stub import Stubber

from chalice_app import invocations

from .conftest import ENV, Delivery

FN, QUEUE = "on_incoming_image", ENV["INCOMING_QUEUE"]
LABELS = (("3", 0.7), ("8", 0.2), ("5", 0.06), ("1", 0.04))


def answer(version: str = "m1", images: int = 1, labels=LABELS, embeddings=None) -> dict:
    """The endpoint's output contract: one row of labels per image (here least probable first), and,
    for a model with a drift reference (every request asks), each image's embedding summary."""
    row = [{"label": label, "probability": p} for label, p in reversed(labels)]
    body = {"model_version": version, "num_classes": 10, "predictions": [row] * images}
    if embeddings is not None:
        body["embeddings"] = [list(e) for e in embeddings]
    return body


class Images:
    """Matches the body of an InvokeEndpoint request that carries these images: raw for one,
    the JSON batch for several."""

    def __init__(self, *images: bytes) -> None:
        self.images = list(images)

    def __eq__(self, body: object) -> bool:
        if len(self.images) == 1:
            return body == self.images[0]
        return [base64.b64decode(text) for text in json.loads(body)["images"]] == self.images

    def __repr__(self) -> str:
        return f"Images({len(self.images)} images)"


@contextmanager
def endpoint(*calls: tuple[Images, Any]):
    """The runtime expects these requests, in order, and answers each: the endpoint's JSON, or
    an error (code, message, HTTP status[, the error's modeled fields])."""
    from chalice_app import aws

    stubber = Stubber(aws._make("sagemaker-runtime"))
    for images, reply in calls:
        content_type = invocations.IMAGE_TYPE if len(images.images) == 1 else invocations.JSON_TYPE
        expected = {"EndpointName": ENV["ENDPOINT_NAME"], "ContentType": content_type,
                    "Accept": invocations.JSON_TYPE, "Body": images,
                    "CustomAttributes": invocations.CUSTOM_ATTRIBUTES}
        if isinstance(reply, tuple):
            code, message, status, *fields = reply
            stubber.add_client_error("invoke_endpoint", service_error_code=code, service_message=message,
                                     http_status_code=status, expected_params=expected,
                                     modeled_fields=fields[0] if fields else None)
        else:
            body = json.dumps(reply).encode()
            stubber.add_response("invoke_endpoint", {"Body": StreamingBody(io.BytesIO(body), len(body)),
                                                     "ContentType": invocations.JSON_TYPE}, expected)
    aws.use_client("sagemaker-runtime", stubber.client)
    try:
        with stubber:
            yield stubber
            stubber.assert_no_pending_responses()
    finally:
        aws.use_client("sagemaker-runtime", None)


def prediction(world, name: str) -> dict:
    return world.client.http.get(f"/predictions/{name}").json_body


def deliver_once(world, *calls) -> Delivery:
    """One Lambda invocation for what is queued, as Lambda's poller does it: delete what
    succeeded, leave the reported failures to SQS."""
    with endpoint(*calls):
        delivery = world.deliver(FN, QUEUE)
    assert delivery is not None, "nothing was queued"
    return delivery
