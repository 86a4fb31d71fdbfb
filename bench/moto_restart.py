"""Durable moto at 10,000 objects: how long writing, a clean stop, a restart and a SIGKILL restart take.

    python bench/moto_restart.py [--objects 10000] [--items 2000] [--messages 500] [--threads 8]

One moto process (`MotoProcess` with a state directory, as the stack runs it) in a
temporary directory: PUT `--objects` small objects (2 KB, 8 client threads), write
`--items` DynamoDB items and send `--messages` SQS messages, then time a clean stop, a
restart (until it answers, everything restored), a SIGKILL of its process group and the
restart `MotoProcess` makes by itself (until the new process answers), checking after each restart that every object, item and message is there. Prints JSON.
Goals (issue #15): restart <= 10 s, clean stop <= 5 s, at 10,000 objects on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from local_aws.moto_server import MotoProcess  # noqa: E402
from local_aws.ports import free_port  # noqa: E402

BUCKET, TABLE, QUEUE = "bench", "bench-items", "bench-queue"


def client(moto: MotoProcess, service: str) -> Any:
    return boto3.client(service, endpoint_url=moto.url, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing", config=Config(max_pool_connections=32))


def fill(moto: MotoProcess, objects: int, items: int, messages: int, threads: int) -> dict[str, float]:
    s3, dynamodb, sqs = client(moto, "s3"), client(moto, "dynamodb"), client(moto, "sqs")
    s3.create_bucket(Bucket=BUCKET)
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda i: s3.put_object(Bucket=BUCKET, Key=f"incoming/{i:05d}.png",
                                              Body=i.to_bytes(4, "big") * 512), range(objects)))
    puts = time.perf_counter() - started
    dynamodb.create_table(TableName=TABLE, BillingMode="PAY_PER_REQUEST",
                          AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                          KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}])
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda i: dynamodb.put_item(TableName=TABLE, Item={"pk": {"S": f"k{i}"}, "n": {"N": str(i)}}),
                      range(items)))
    item_writes = time.perf_counter() - started
    url = sqs.create_queue(QueueName=QUEUE)["QueueUrl"]
    for start in range(0, messages, 10):
        sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": f"m{start + i}"}
                                                      for i in range(min(10, messages - start))])
    return {"put_objects_per_s": round(objects / puts, 1), "put_items_per_s": round(items / item_writes, 1)}


def check(moto: MotoProcess, objects: int, items: int, messages: int) -> None:
    s3, dynamodb, sqs = client(moto, "s3"), client(moto, "dynamodb"), client(moto, "sqs")
    listed = sum(page.get("KeyCount", 0) for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET))
    scanned = sum(page["Count"] for page in dynamodb.get_paginator("scan").paginate(TableName=TABLE))
    queued = int(sqs.get_queue_attributes(QueueUrl=sqs.get_queue_url(QueueName=QUEUE)["QueueUrl"],
                                          AttributeNames=["ApproximateNumberOfMessages"])["Attributes"][
        "ApproximateNumberOfMessages"])
    if (listed, scanned, queued) != (objects, items, messages):
        raise SystemExit(f"lost writes: {listed}/{objects} objects, {scanned}/{items} items, "
                         f"{queued}/{messages} messages")


def timed_start(state_dir: Path, port: int) -> tuple[MotoProcess, float]:
    started = time.perf_counter()
    moto = MotoProcess("127.0.0.1", port, state_dir=state_dir).start()
    return moto, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--items", type=int, default=2_000)
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    counts = (args.objects, args.items, args.messages)
    with tempfile.TemporaryDirectory() as directory:
        state_dir, port = Path(directory) / "moto", free_port()
        moto, empty_start = timed_start(state_dir, port)
        figures: dict[str, Any] = {"objects": args.objects, "items": args.items, "messages": args.messages,
                                   "empty_start_s": round(empty_start, 2)}
        figures |= fill(moto, args.objects, args.items, args.messages, args.threads)
        started = time.perf_counter()
        moto.stop()
        figures["clean_stop_s"] = round(time.perf_counter() - started, 2)
        moto, restart = timed_start(state_dir, port)
        figures["restart_s"] = round(restart, 2)
        check(moto, *counts)
        killed, started = moto.pid, time.perf_counter()
        os.killpg(killed, signal.SIGKILL)  # a crash: gunicorn's master and worker, its group
        moto.back_within(60, killed=killed)  # MotoProcess restarts it
        figures["restart_after_sigkill_s"] = round(time.perf_counter() - started, 2)
        check(moto, *counts)
        moto.stop()
        figures["state_dir_mb"] = round(sum(p.stat().st_size for p in state_dir.rglob("*") if p.is_file()) / 2**20, 1)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
