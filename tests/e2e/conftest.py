"""The whole stack as a person runs it: `python -m local_aws up` in a child process, on free
ports, with a small training budget set through the stage's own variables (`--set`)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from local_aws.project.budget import SCHEDULE_SECONDS, SMALL_BUDGET
from local_aws.project.launcher import StackProcess

# The browser the console's tests drive: Debian's Chromium (`make install`), headless, under Playwright.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Screenshots of the console's pages, for a reviewer to look at (ignored by git).
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-output" / "console"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: `make install` installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    print(f"console screenshots: {SCREENSHOTS}")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


# The tests that share one trained stack (`trained_stack`): one xdist group, so one worker, one stack,
# one training (100-180 s). Its restart and kill -9 test goes last in it (pytest_collection_modifyitems).
TRAINED_STACK_GROUP = "trained-stack"
# The shared stack's stage: the small budget; every prediction sampled, so every one waits for review
# (the console labels one); a day's quiet window, so the image the console labels, which arrives as
# training data, stays a pending burst (only a _COMMIT marker would end it) instead of training a
# second model under the other tests.
TRAINED_STACK_SETTINGS = {**SMALL_BUDGET, "REVIEW_SAMPLE_RATE": "1", "QUIET_WINDOW_SECONDS": "86400"}


def wait_until(check: Callable[[], Any], timeout: float, what: str, every: float = 2.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(every)


def upload_all(s3: Any, bucket: str, files: dict[str, Path], threads: int = 8) -> None:
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda item: s3.upload_file(str(item[1]), bucket, item[0]), files.items()))


@pytest.fixture
def moto_url(monkeypatch):
    """moto in server mode on a free port, fresh, with boto3 pointed at it for this test."""
    import urllib.request

    from local_aws.moto_server import MotoServer

    server = MotoServer().start()
    url = server.url
    urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST"))
    for name, value in {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    yield url
    # The server shares moto's backends with this process: leave them empty for the next test.
    urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST"))
    server.stop()


@dataclass
class TrainedStack:
    """The stack with a third of the digits uploaded as one burst: its run trains by itself; `live()`
    waits for the model it deploys. The stack is the tests' to stop (the restart test does, last)."""

    stack: StackProcess
    state: Path
    files: list[Path]
    model: dict[str, Any] | None = field(default=None)

    def live(self, timeout: float = 900) -> dict[str, Any]:
        if self.model is None:
            stack = self.stack

            def live() -> dict[str, Any] | None:
                status, body = stack.api("/models/live")
                if status == 200:
                    return body
                _, runs = stack.api("/runs")
                ended = [r for r in runs.get("items", []) if r["status"] in ("FAILED", "REJECTED", "REFUSED")]
                assert not ended, f"a run ended {ended[0]['status']}: {ended[0].get('reason')} (log: {stack.log_path})"
                return None

            self.model = wait_until(live, timeout, f"a LIVE model (log: {stack.log_path})", every=5)
        return self.model


@pytest.fixture(scope="session")
def trained_stack(tmp_path_factory, digits_labels) -> Iterator[TrainedStack]:
    files = sorted(digits_labels.rglob("*.png"))
    state = tmp_path_factory.mktemp("trained-stack") / "state"
    stack = StackProcess(state, overrides=TRAINED_STACK_SETTINGS, schedule_seconds=SCHEDULE_SECONDS)
    with stack:
        s3 = stack.client("s3")
        upload_all(s3, stack.bucket, {f"training-data/{p.parent.name}/{p.name}": p for p in files[::3]})
        s3.put_object(Bucket=stack.bucket, Key="training-data/_COMMIT", Body=b"")  # the upload is complete
        yield TrainedStack(stack, state, files)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow tests first, longest work started first on the workers; among them the trained stack's
    test that stops it (marked `stops_the_stack`) after the others that use it. This hook sees the
    whole session's items, not only this folder's."""
    items.sort(key=lambda item: (item.get_closest_marker("slow") is None,
                                 item.get_closest_marker("stops_the_stack") is not None))
