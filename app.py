"""The Chalice app: every Lambda and route, each forwarding to chalice_app.

Declarations here are read by Chalice (packaging) and by the local dispatcher;
they use only environment variables, never code, for names. Powertools wraps the
functions in chalice_app.handlers (its decorators cannot sit on a Chalice handler).
"""

from __future__ import annotations

import os

from chalice import Chalice, Rate, Response

from chalice_app import api, console_assets, handlers, sign_in
from chalice_app.auth import route_authorizer
from chalice_app.config import endpoint_max_instances, settings
from chalice_app.events import ENDPOINT_PATTERN, TRAINING_PATTERN, TUNING_PATTERN
from chalice_app.invocations import MAX_IMAGES_PER_REQUEST
from chalice_app.observability import logger, metrics
from chalice_app.scaling import TRAINING_DATA_CONCURRENCY, incoming_concurrency

app = Chalice(app_name="image-pipeline")

# Read the settings at cold start, where Lambda runs this module (its runtime sets
# AWS_LAMBDA_FUNCTION_NAME): a bad stage setting fails the container's start with its ConfigError
# message rather than every invocation answering 500. Elsewhere the module is imported before the
# environment is set (tests, packaging, the local stack, which checks the stage before it starts).
# settings() keeps its cache: the handlers get these very settings.
if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
    settings()

TRAINING_QUEUE = os.environ.get("TRAINING_QUEUE", "image-pipeline-training-data")
INCOMING_QUEUE = os.environ.get("INCOMING_QUEUE", "image-pipeline-incoming")
# The stage's authoriser (AUTH) on every data route: the reads expose predictions, S3 URIs and
# hyperparameters too. The local stage stays open (chalice_app/auth.py).
_auth = route_authorizer(os.environ)


@app.middleware("http")
def _http_observability(event, get_response):
    logger.set_correlation_id(event.context.get("requestId"))
    try:
        return get_response(event)
    finally:
        metrics.flush_metrics()


# Uploads of a burst gather for up to 20 s per batch; the quiet window ends the burst. Two batches
# at most at once: they all write one burst item (chalice_app/scaling.py).
@app.on_sqs_message(queue=TRAINING_QUEUE, batch_size=100, maximum_batching_window_in_seconds=20,
                    maximum_concurrency=TRAINING_DATA_CONCURRENCY)
def on_training_data(event):
    return handlers.training_data(event.to_dict(), event.context)


# A batch fills at most one InvokeEndpoint (its 64 images); 64 rather than 10 raised the local
# pipeline's throughput by 17% (bench/e2e.py), and the 1 s window bounds the wait of a lone image.
# Concurrent batches are concurrent requests to the endpoint: as many as its instances at their
# most can serve (the stage's ENDPOINT_MAX_INSTANCES, read at packaging; chalice_app/scaling.py).
@app.on_sqs_message(queue=INCOMING_QUEUE, batch_size=MAX_IMAGES_PER_REQUEST, maximum_batching_window_in_seconds=1,
                    maximum_concurrency=incoming_concurrency(endpoint_max_instances(dict(os.environ))))
def on_incoming_image(event):
    return handlers.incoming_images(event.to_dict(), event.context)


@app.schedule(Rate(1, unit=Rate.MINUTES))
def quiet_check(event):
    return handlers.quiet_check(event.to_dict(), event.context)


# Its own function, not quiet_check's: the first check of a version streams its model.tar.gz, and a
# failing drift check must not hold up (or be retried with) the runs the quiet check drives.
@app.schedule(Rate(1, unit=Rate.MINUTES))
def drift_check(event):
    return handlers.drift_check(event.to_dict(), event.context)


@app.on_cw_event(TUNING_PATTERN)
def on_tuning_state(event):
    return handlers.tuning_state(event.to_dict(), event.context)


@app.on_cw_event(TRAINING_PATTERN)
def on_training_state(event):
    return handlers.training_state(event.to_dict(), event.context)


@app.on_cw_event(ENDPOINT_PATTERN)
def on_endpoint_state(event):
    return handlers.endpoint_state(event.to_dict(), event.context)


def _query(name):
    return (app.current_request.query_params or {}).get(name)


@app.route("/predictions", methods=["GET"], authorizer=_auth)
def list_predictions():
    return api.list_predictions(_query("limit"), _query("cursor"))


@app.route("/predictions/{name}", methods=["GET"], authorizer=_auth)
def get_prediction(name):
    return api.get_prediction(name)


@app.route("/uploads", methods=["POST"], authorizer=_auth)
def create_upload():
    return api.upload_url(app.current_request.json_body)


@app.route("/models", methods=["GET"], authorizer=_auth)
def list_models():
    return api.list_models()


@app.route("/models/live", methods=["GET"], authorizer=_auth)
def live_model():
    return api.live_model()


@app.route("/runs", methods=["GET"], authorizer=_auth)
def list_runs():
    return api.list_runs(_query("limit"), _query("cursor"))


@app.route("/runs", methods=["POST"], authorizer=_auth)
def start_run():
    run = api.start_run()
    # Relative to the request's URL, so it keeps API Gateway's stage prefix (/api/runs -> /api/runs/<id>).
    return Response(body=run, status_code=202, headers={"Location": f"runs/{run['run_id']}"})


@app.route("/runs/{run_id}", methods=["GET"], authorizer=_auth)
def get_run(run_id):
    return api.get_run(run_id)


@app.route("/runs/{run_id}/report", methods=["GET"], authorizer=_auth)
def get_run_report(run_id):
    return Response(body=api.run_report(run_id), status_code=200,
                    headers={"Content-Type": "text/html; charset=utf-8", "X-Content-Type-Options": "nosniff"})


@app.route("/review", methods=["GET"], authorizer=_auth)
def list_review():
    return api.list_review(_query("limit"), _query("cursor"))


@app.route("/review/{name}", methods=["POST"], authorizer=_auth)
def label_review(name):
    return api.label_review(name, app.current_request.json_body)


# The web console (chalice_app/console/): static text files, same origin as the API. They and how
# to sign in are open, as a browser loads them before anyone signs in; they hold no data.
@app.route("/console", methods=["GET"])
def console_index():
    return console_assets.response(console_assets.INDEX)


@app.route("/console/{name}", methods=["GET"])
def console_file(name):
    return console_assets.response(name)


@app.route("/sign-in", methods=["GET"])
def sign_in_settings():
    return sign_in.sign_in()


@app.route("/drift", methods=["GET"], authorizer=_auth)
def list_drift():
    return api.list_drift(_query("limit"), _query("cursor"))
