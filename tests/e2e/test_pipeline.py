"""End to end on one machine: labelled data in, a model LIVE by itself, predictions through
the API, a restart of the stack that loses nothing, and a `kill -9` of the stack in the
middle of an upload burst that loses nothing and leaves no process behind. Nothing is
called by hand but S3 uploads and the HTTP API, as a user would."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import time
from typing import Any

import psutil
import pytest
from PIL import Image

from local_aws.project.budget import SCHEDULE_SECONDS
from local_aws.project.launcher import StackProcess

from .conftest import TRAINED_STACK_GROUP, TRAINED_STACK_SETTINGS, TrainedStack, upload_all, wait_until

pytestmark = pytest.mark.slow


def _group_gone(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE  # is_running: not a reused pid
    except psutil.NoSuchProcess:
        return False


def _object_count(s3: Any, bucket: str) -> int:
    return sum(page["KeyCount"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket))


@pytest.mark.xdist_group(TRAINED_STACK_GROUP)
@pytest.mark.stops_the_stack
def test_upload_train_serve_restart(trained_stack: TrainedStack):
    files = trained_stack.files
    queries = {f"incoming/{p.parent.name}-{p.name}": p for p in files[1::60][:8]}
    state = trained_stack.state

    # The stack the console's tests shared (the fixture stops it if this test fails first), a third of
    # the digits uploaded: it trains by itself.
    with contextlib.nullcontext(trained_stack.stack) as stack:
        s3 = stack.client("s3")
        trained_stack.live()
        status, model = stack.api("/models/live")  # as it is now (the console's labels count in it)
        assert status == 200
        status, runs = stack.api("/runs")
        assert status == 200
        assert any(run["status"] == "DEPLOYED" and run.get("model_version") == model["model_version"]
                   for run in runs["items"]), runs

        upload_all(s3, stack.bucket, queries)

        def predicted():
            answers = {key: stack.api("/predictions/" + key.split("/", 1)[1]) for key in queries}
            ok = all(code == 200 and body.get("status") == "OK" for code, body in answers.values())
            return answers if ok else None

        answers = wait_until(predicted, 120, "predictions for every uploaded image")
        for key, (_, body) in answers.items():
            assert body["labels"], body
            assert {"label", "probability"} <= set(body["labels"][0]), body
        objects_before = s3.list_objects_v2(Bucket=stack.bucket)["KeyCount"]
        pid = stack.process.pid
        assert stack.stop() == 0, stack.log_tail()
    assert _group_gone(pid), "the stack left processes behind"

    with StackProcess(state, overrides=TRAINED_STACK_SETTINGS, schedule_seconds=SCHEDULE_SECONDS) as again:
        s3 = again.client("s3")
        assert s3.list_objects_v2(Bucket=again.bucket)["KeyCount"] == objects_before
        status, body = again.api("/models/live")
        assert status == 200 and body == model
        for key, (_, before) in answers.items():
            status, after = again.api("/predictions/" + key.split("/", 1)[1])
            assert status == 200 and after == before

        # The endpoint is hosted again: a new image gets a prediction from the same model.
        buffer = io.BytesIO()
        Image.open(files[5]).save(buffer, format="PNG")
        s3.put_object(Bucket=again.bucket, Key="incoming/after-restart.png", Body=buffer.getvalue())

        def answered():
            code, item = again.api("/predictions/after-restart.png")
            return item if code == 200 and item.get("status") == "OK" else None

        item = wait_until(answered, 180, "a prediction after the restart")
        assert item["model_version"] == answers[next(iter(answers))][1]["model_version"]

        # kill -9 of the stack's own process (not its group) once a burst of uploads is acknowledged: at
        # once, with predictions in flight (two seconds later, as the issue tried, they were all done here).
        objects_before = _object_count(s3, again.bucket)
        burst = {f"incoming/burst-{i:02d}.png": path for i, path in enumerate(files[2::90][:20])}
        children = psutil.Process(again.process.pid).children(recursive=True)
        commands = [" ".join(child.cmdline()) for child in children]
        assert any("local_aws.moto_server" in c for c in commands), commands
        assert sum("endpoint" in c for c in commands) >= 2, commands  # the endpoint host: gunicorn's master and worker
        for key, path in burst.items():
            answer = s3.put_object(Bucket=again.bucket, Key=key, Body=path.read_bytes())
            assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
        os.kill(again.process.pid, signal.SIGKILL)
        again.process.wait(10)
        wait_until(lambda: not any(map(_alive, children)), 30, f"no process of the dead stack left: {commands}",
                   every=0.5)

    started = time.monotonic()
    with StackProcess(state, overrides=TRAINED_STACK_SETTINGS, schedule_seconds=SCHEDULE_SECONDS) as third:
        print(f"up again after kill -9 in {time.monotonic() - started:.1f} s")
        s3 = third.client("s3")
        assert _object_count(s3, third.bucket) == objects_before + len(burst)
        status, body = third.api("/models/live")
        assert status == 200 and body == model

        def burst_predicted():
            items = [i for i in third.predictions() if i["image_key"] in burst]
            done = {i["image_key"] for i in items if i["status"] in ("OK", "FAILED")}
            return items if done == set(burst) else None

        items = wait_until(burst_predicted, 300, "a prediction for every image of the burst")
        assert sorted(i["image_key"] for i in items) == sorted(burst)  # exactly one each
        failed = [i for i in items if i["status"] != "OK"]
        assert not failed, failed
