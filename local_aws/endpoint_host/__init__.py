"""The local endpoint host: serves a `model.tar.gz` under SageMaker's container contract.

    python -m local_aws.endpoint_host --model PATH --port N
        [--host 127.0.0.1] [--workers 1] [--torch-threads CORES/WORKERS]
        [--max-batch-size 8] [--max-batch-wait-ms 0] [--request-threads 16]

`--model` is a `model.tar.gz` (checked and unpacked into a temporary directory: no
absolute paths, no `..`, no links or devices) or an unpacked model directory. The
artefact's own `code/inference.py` answers (SageMaker's handler contract: model_fn,
input_fn, predict_fn, output_fn):

    GET  /ping         200 {"status": "healthy"} from a worker whose model is loaded
    POST /invocations  200 the handler's JSON; a bad request gets its 4xx and
                       {"status": code, "error": message}; a failure 500 likewise.
                       Headers: Content-Type, Accept, X-Amzn-SageMaker-Custom-Attributes.

The server is gunicorn with `--workers` processes; each has `--torch-threads` torch
threads (default: cores / workers, so the cores are not oversubscribed),
`--request-threads` connection threads, and one model thread, which loads the model
and runs every forward pass. Dynamic batching is on by default: requests waiting in
one worker share a forward pass of up to `--max-batch-size` images (1 turns it off),
waiting at most `--max-batch-wait-ms` for more (default 0: never wait, batch only
what queued up while the model was busy, so a lone request is not delayed).

From Python (what the local SageMaker uses):

    with EndpointHost(Path("model.tar.gz"), port=None, workers=1, max_batch_size=8) as host:
        host.url  # http://127.0.0.1:PORT; start() and wait_healthy() already done
    # or host.start(); host.wait_healthy(timeout=120); ...; host.stop()
"""

from local_aws.endpoint_host.extract import UnsafeArchiveError, safe_extract
from local_aws.endpoint_host.host import EndpointHost, HostStartError

__all__ = ["EndpointHost", "HostStartError", "UnsafeArchiveError", "safe_extract"]
