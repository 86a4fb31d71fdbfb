"""End-to-end benchmark: images dropped into incoming/ until every prediction is stored.

    python bench/e2e.py [--images 1000] [--image-size 224] [--state-dir DIR] [--concurrency 4]

Starts the stack (`python -m local_aws up`) on free ports. With a fresh state dir the
pipeline first trains and deploys a model by itself on a small budget (a few minutes):
a ResNet-18 at `--image-size` pixels, by default the product's 224, the workload of
bench/serve_latency.py. At that size the endpoint does the work it does in production.
At the demo's 32 pixels (or with `--state-dir` of a stack that already has a LIVE model,
after `make demo`: .local-aws/demo) the endpoint answers hundreds of images a second, and
the ratio measures instead the CPU that the emulated S3, SQS, DynamoDB and Lambda take
from the same 2 cores (on AWS they run elsewhere). Then, measured in the same run:

- the endpoint's own throughput: InvokeEndpoint calls on the same images from as many
  concurrent clients as the dispatcher runs batches, both one image a call and 64 a call
  (the JSON batches the pipeline sends), measured before and after the pipeline; the
  ratio uses the highest of the four (the load drifts during a run, and the pipeline's
  own batching must not make a bar it is measured against lower);
- the pipeline: N images uploaded to incoming/ by 8 threads, one PutObject each; each
  one's latency is from the start of its upload to the `created_at` of its stored
  prediction (the stack runs on this machine, so the clocks are the same); throughput
  is N over the time from the first upload to the last stored prediction. (boto3's
  `upload_file` would cost the client twice the CPU per image, in a transfer manager
  with threads of its own: on 2 shared cores that is taken from the pipeline measured.)

Prints JSON, with the ratio of the pipeline's throughput to the endpoint's (goal >= 0.8).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from chalice_app.invocations import MAX_IMAGES_PER_REQUEST, invoke_request  # noqa: E402
from local_aws.project.demo import demo_budget  # noqa: E402
from local_aws.project.launcher import StackProcess  # noqa: E402
from training.demo_data import write_digits  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def ensure_live_model(stack: StackProcess, images: list[Path], timeout: float = 1800) -> dict:
    status, live = stack.api("/models/live")
    if status == 200:
        return live
    s3 = stack.client("s3")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda p: s3.upload_file(str(p), stack.bucket, f"training-data/{p.parent.name}/{p.name}"),
                      images[::3]))
    s3.put_object(Bucket=stack.bucket, Key="training-data/_COMMIT", Body=b"")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, live = stack.api("/models/live")
        if status == 200:
            return live
        time.sleep(5)
    raise TimeoutError(f"no model went live within {timeout} s; see {stack.log_path}")


def in_service_endpoint(stack: StackProcess, timeout: float = 300) -> str:
    """The endpoint's name once it serves (a restarted stack hosts it again, Creating → InService)."""
    sagemaker = stack.client("sagemaker")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        endpoints = sagemaker.list_endpoints()["Endpoints"]
        if endpoints and endpoints[0]["EndpointStatus"] == "InService":
            return endpoints[0]["EndpointName"]
        time.sleep(1)
    raise TimeoutError(f"the endpoint was not InService within {timeout} s; see {stack.log_path}")


def endpoint_throughput(stack: StackProcess, payloads: list[bytes], clients: int, images: int,
                        per_request: int = 1) -> float:
    """Images per second through InvokeEndpoint from `clients` at once, `per_request` images a call
    (several as the pipeline sends them: chalice_app.invocations' JSON body)."""
    runtime = stack.client("sagemaker-runtime")
    endpoint = in_service_endpoint(stack)

    def invoke(index: int) -> None:
        batch = [payloads[(index * per_request + i) % len(payloads)] for i in range(per_request)]
        runtime.invoke_endpoint(**invoke_request(endpoint, batch))["Body"].read()

    for index in range(clients):  # warm up
        invoke(index)
    requests = max(clients, images // per_request)
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(invoke, range(requests)))
    return requests * per_request / (time.perf_counter() - started)


def endpoint_ceiling(stack: StackProcess, payloads: list[bytes], clients: int) -> dict[str, float]:
    """The endpoint alone, one image per call and in the pipeline's batches of 64."""
    return {"single": endpoint_throughput(stack, payloads, clients, 300),
            "batched": endpoint_throughput(stack, payloads, clients, 1280, MAX_IMAGES_PER_REQUEST)}


def wait_for_predictions(dynamodb, table: str, keys: list[str], timeout: float, window: int = 100) -> dict:
    """The final prediction items of `keys`, read as they appear.

    Reads only the oldest `window` keys still waiting (BatchGetItem), not the whole table:
    the poll shares moto with the pipeline it measures, and a scan per poll would cost it
    time in proportion to every item ever stored.
    """
    waiting, stored = list(keys), {}
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        request = {table: {"Keys": [{"image_key": {"S": key}} for key in waiting[:window]], "ConsistentRead": True,
                           "ProjectionExpression": "image_key, #s, created_at",
                           "ExpressionAttributeNames": {"#s": "status"}}}
        while request:
            answer = dynamodb.batch_get_item(RequestItems=request)
            for item in answer["Responses"].get(table, []):
                if item["status"]["S"] in ("OK", "FAILED"):
                    stored[item["image_key"]["S"]] = item
            request = answer.get("UnprocessedKeys")
        waiting = [key for key in waiting if key not in stored]
        time.sleep(1)
    return stored


def pipeline(stack: StackProcess, files: list[Path], count: int, timeout: float) -> dict:
    s3, dynamodb = stack.client("s3"), stack.client("dynamodb")
    table = next(t for t in dynamodb.list_tables()["TableNames"] if t.endswith("-predictions"))
    prefix = f"incoming/bench-{int(time.time())}-"
    keys = [f"{prefix}{index:05d}.png" for index in range(count)]
    started_at: dict[str, float] = {}
    lock = threading.Lock()

    payloads = [path.read_bytes() for path in files]

    def upload(index: int) -> None:
        key = keys[index]
        with lock:
            started_at[key] = time.time()
        s3.put_object(Bucket=stack.bucket, Key=key, Body=payloads[index % len(payloads)])

    first = time.time()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(upload, range(count)))
    uploaded = time.time()
    stored = wait_for_predictions(dynamodb, table, keys, timeout)
    latencies = [float(item["created_at"]["N"]) - started_at[key] for key, item in stored.items()]
    last = max(float(item["created_at"]["N"]) for item in stored.values()) if stored else time.time()
    statuses: dict[str, int] = {}
    for item in stored.values():
        statuses[item["status"]["S"]] = statuses.get(item["status"]["S"], 0) + 1
    return {
        "images": count, "stored": len(stored), "statuses": statuses,
        "upload_seconds": round(uploaded - first, 2), "wall_seconds": round(last - first, 2),
        "throughput_img_s": round(len(stored) / (last - first), 2) if stored else 0.0,
        "p50_ms": round(statistics.median(latencies) * 1000, 1) if latencies else None,
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 1) if latencies else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--state-dir", type=Path, default=None)
    parser.add_argument("--concurrency", type=int, default=4, help="batches of the incoming queue at once")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--image-size", type=int, default=224,
                        help="pixels the model trained with a fresh state dir sees (the product's 224 by default)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    try:
        write_digits(work / "digits", "labels")
        files = sorted((work / "digits").rglob("*.png"))
        state = args.state_dir or work / "state"
        # One trial, then the final job: a whole ResNet-18 to serve, only its head trained (in about
        # a minute; throughput does not depend on the weights).
        budget = demo_budget(1, 1, 2, image_size=args.image_size, freeze="backbone")
        with StackProcess(state, overrides=budget, schedule_seconds=3,
                          concurrency=args.concurrency, log_path=work / "stack.log") as stack:
            live = ensure_live_model(stack, files)
            payloads = [p.read_bytes() for p in files[:50]]
            before = endpoint_ceiling(stack, payloads, args.concurrency)
            result = pipeline(stack, files, args.images, args.timeout)
            after = endpoint_ceiling(stack, payloads, args.concurrency)
        best = {shape: max(before[shape], after[shape]) for shape in before}
        own = max(best.values())
        throughput = result["throughput_img_s"]
        result.update({"model_version": live.get("model_version"),
                       "image_size": args.image_size if args.state_dir is None else "the state dir's live model",
                       "dispatcher_concurrency": args.concurrency,
                       "endpoint_img_s": round(own, 2),
                       "endpoint_img_s_before": {k: round(v, 2) for k, v in before.items()},
                       "endpoint_img_s_after": {k: round(v, 2) for k, v in after.items()},
                       # Against each request shape, and (the goal's) against the endpoint's best.
                       "ratio_to_endpoint_single": round(throughput / best["single"], 3),
                       "ratio_to_endpoint_batched": round(throughput / best["batched"], 3),
                       "ratio_to_endpoint": round(throughput / own, 3) if own else None,
                       "goal_ratio": 0.8, "goal_met": bool(own) and throughput / own >= 0.8})
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
