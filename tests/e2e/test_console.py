"""The web console in a real browser (Debian's headless Chromium under Playwright) against the
local stack the pipeline test shares (tests/e2e/conftest.py: one training): a run seen moving
through its states, images uploaded by drag and drop and their predictions, a label given from
the review queue, and the page's load time with 1,000 predictions stored (printed, not asserted).
Screenshots of each page go to test-output/console/ (ignored by git); the test prints where."""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from .conftest import SCREENSHOTS, TRAINED_STACK_GROUP, TrainedStack, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group(TRAINED_STACK_GROUP)]

STEPS = ["STARTING", "TUNING", "TRAINING", "DEPLOYING", "DEPLOYED"]


@pytest.fixture
def page(browser, trained_stack: TrainedStack) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, errors  # the script threw


def console(stack: TrainedStack) -> str:
    return f"{stack.stack.urls['api']}/console"


def test_a_run_moves_through_its_states_on_the_page(page, trained_stack):
    """The shared stack's first run, followed on the overview as it trains (the page polls)."""
    page.goto(console(trained_stack))
    seen: list[str] = []
    deadline = time.monotonic() + 900
    while "DEPLOYED" not in seen:
        assert time.monotonic() < deadline, f"no DEPLOYED run on the page; seen {seen}"
        status = page.evaluate("document.querySelector('#runs li.run')?.dataset.status ?? null")
        if status and (not seen or seen[-1] != status):
            assert status in STEPS, f"the run ended {status}: {page.inner_text('#runs')}"
            seen.append(status)
        time.sleep(0.5)
    assert seen == sorted(seen, key=STEPS.index) and len(seen) >= 3, seen  # forward, through several states
    print(f"run states seen on the page: {seen}")
    model = trained_stack.live()
    page.wait_for_selector(f"#live-version:has-text('{model['model_version']}')")
    assert "%" in page.inner_text("#live-test-accuracy")
    page.wait_for_selector(f"#registry tr[data-version='{model['model_version']}']")
    # GET /drift on the overview: the live version, steady (a few images: no window compared yet).
    drift = page.wait_for_selector("#drift-state[data-drifting='false']:has-text('STEADY')")
    assert "not compared yet" in drift.inner_text() or "confidence PSI" in drift.inner_text(), drift.inner_text()
    report = page.get_attribute("#runs li.run a.report", "href")
    answer = page.request.get(f"{trained_stack.stack.urls['api']}/{report}")
    assert answer.status == 200 and answer.headers["content-type"].startswith("text/html")
    assert "confusion" in answer.text().lower()
    page.screenshot(path=SCREENSHOTS / "overview.png", full_page=True)


def _drop(page, files: list[Path]) -> None:
    """A real drop event on the drop zone, its DataTransfer holding the files (as a person's drag does)."""
    payload = [{"name": f.name, "data": base64.b64encode(f.read_bytes()).decode()} for f in files]
    page.evaluate("""(files) => {
        const transfer = new DataTransfer();
        for (const f of files) {
            const bytes = Uint8Array.from(atob(f.data), (c) => c.charCodeAt(0));
            transfer.items.add(new File([bytes], f.name, { type: "image/png" }));
        }
        document.querySelector("#drop").dispatchEvent(new DragEvent("drop", { dataTransfer: transfer, bubbles: true }));
    }""", payload)


def test_images_dropped_on_the_page_get_their_predictions(page, trained_stack):
    trained_stack.live()
    page.goto(console(trained_stack) + "#upload")
    # Ready once it knows how to sign in (the load event does not wait for that) and has loaded.
    page.wait_for_selector("body[data-loaded='true']")
    images = trained_stack.files[7::200][:3]
    _drop(page, images)
    # Polled from here: the page's CSP (no 'unsafe-eval') refuses wait_for_function's evaluated strings.
    keys = wait_until(lambda: (lambda k: k if len(k) == len(images) else None)(page.eval_on_selector_all(
        "#uploads .outcome[data-key]", "nodes => nodes.map(n => n.dataset.key)")), 60, "every upload done", every=0.2)
    assert all(key.startswith("incoming/") for key in keys), keys
    assert page.eval_on_selector_all("#uploads progress", "nodes => nodes.map(n => n.value)") == [1] * len(images)
    page.screenshot(path=SCREENSHOTS / "upload.png", full_page=True)
    page.click("nav a[href='#predictions']")
    for key in keys:
        row = page.wait_for_selector(f"#prediction-table tr[data-key='{key}'][data-status='OK']", timeout=180_000)
        assert re.search(r"\d \d+\.\d%", row.inner_text()), row.inner_text()  # top-k labels with probabilities
    page.screenshot(path=SCREENSHOTS / "predictions.png", full_page=True)


def test_a_label_given_from_the_review_queue_creates_the_training_object(page, trained_stack):
    trained_stack.live()
    stack = trained_stack.stack
    s3 = stack.client("s3")
    image = trained_stack.files[11]
    s3.put_object(Bucket=stack.bucket, Key="incoming/to-review.png", Body=image.read_bytes())
    page.goto(console(trained_stack) + "#review")
    # Every prediction of the shared stack waits for review (REVIEW_SAMPLE_RATE=1): it joins the queue.
    item = page.wait_for_selector(".review-item[data-name='to-review.png']", timeout=180_000)
    page.screenshot(path=SCREENSHOTS / "review.png", full_page=True)
    label = image.parent.name
    button = item.wait_for_selector(f"button[data-label='{label}']")
    first = page.eval_on_selector(".review-item", "node => node.dataset.name")
    if first == "to-review.png":  # the keyboard labels the first image: its key, as the button shows it
        page.keyboard.press(button.inner_text().split()[-1])
    else:
        button.click()
    page.wait_for_selector(".review-item[data-name='to-review.png']", state="detached")
    status = page.inner_text("#status")
    [key] = re.findall(r"training-data/\S+", status)
    assert key.startswith(f"training-data/{label}/to-review-")
    assert s3.head_object(Bucket=stack.bucket, Key=key)["ContentLength"] == image.stat().st_size
    code, prediction = stack.api("/predictions/to-review.png")
    assert code == 200 and prediction["review_label"] == label and prediction["training_key"] == key


def test_the_page_loads_with_a_thousand_predictions_stored(page, trained_stack):
    """Written straight into the predictions table (the page is measured, not the classifier)."""
    trained_stack.live()
    stack = trained_stack.stack
    table = stack.client("dynamodb")
    name = next(t for t in table.list_tables()["TableNames"] if "prediction" in t)
    from boto3.dynamodb.types import TypeSerializer

    serialise = TypeSerializer().serialize
    now = time.time()
    items = [{"image_key": f"incoming/load-{i:04d}.png", "etag": f"{i:032x}", "status": "OK" if i % 10 else "FAILED",
              "feed": "all", "created_at": Decimal(str(now - 1000 + i)), "model_version": "load-test",
              **({"labels": [{"label": str(i % 10), "probability": Decimal("0.9")},
                             {"label": str((i + 1) % 10), "probability": Decimal("0.1")}]} if i % 10
                 else {"error": "not an image"})} for i in range(1000)]
    for start in range(0, len(items), 25):
        table.batch_write_item(RequestItems={name: [{"PutRequest": {"Item": {k: serialise(v) for k, v in item.items()}}}
                                                    for item in items[start:start + 25]]})
    assert stack.api("/predictions?limit=1")[1]["items"][0]["image_key"] == "incoming/load-0999.png"
    timings = {}
    for view in ("overview", "predictions", "review", "upload"):
        page.goto("about:blank")  # each a fresh load of the page, not a change of its #view
        started = time.perf_counter()
        page.goto(console(trained_stack) + f"#{view}")
        page.wait_for_selector("body[data-loaded='true']")
        timings[view] = round(time.perf_counter() - started, 3)
    page.wait_for_selector("#prediction-table tr[data-key='incoming/load-0999.png']", state="attached")
    page.goto(console(trained_stack) + "#predictions")
    page.wait_for_selector("body[data-loaded='true']")
    page.screenshot(path=SCREENSHOTS / "predictions-1000.png", full_page=True)
    print(f"console load with 1,000 predictions stored (s, navigation to data shown): {timings}")
