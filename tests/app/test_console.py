"""The web console's files through the app (chalice.test.Client), the thumbnails' URLs and a run's
report, under the stage's enforced policy (tests/app/conftest.py)."""

from __future__ import annotations

import re

import pytest
import requests

from chalice_app import console_assets, reports
from chalice_app.config import settings
from chalice_app.stores import stores

from .conftest import BUCKET, png_bytes
from .tar_archives import gzipped_tar


def test_the_console_and_its_files_are_served_with_their_types(world):
    page = world.client.http.get("/console")
    assert page.status_code == 200 and page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    html = page.body.decode()
    referenced = re.findall(r'(?:src|href)="([^"#]+)"', html)
    assert sorted(referenced) == ["console/console.css", "console/console.js"]  # nothing from elsewhere
    for name, media_type in (("console.js", "text/javascript"), ("sign_in.js", "text/javascript"),
                             ("console.css", "text/css")):
        answer = world.client.http.get(f"/console/{name}")
        assert answer.status_code == 200 and answer.headers["Content-Type"].startswith(media_type), name
        assert answer.body.decode() == (console_assets.CONSOLE_DIR / name).read_text()
    for script in ("console.js", "sign_in.js"):
        text = (console_assets.CONSOLE_DIR / script).read_text()
        assert "http://" not in text and "https://" not in text and "innerHTML" not in text, script


def test_the_pages_policy_lets_a_report_opened_from_memory_keep_its_style():
    """Where the API takes a token the page opens a run's report from memory, and that page keeps the
    console's Content-Security-Policy: its one inline <style> is allowed by hash, nothing else inline."""
    import base64
    import hashlib

    from training.report import _CSS

    digest = base64.b64encode(hashlib.sha256(_CSS.encode()).digest()).decode()
    assert console_assets.REPORT_STYLE == f"'sha256-{digest}'"
    assert "unsafe-inline" not in console_assets.POLICY


@pytest.mark.parametrize("name", ["app.py", "..%2Fapp.py", "%2E%2E%2F%2E%2E%2Fapp.py", "console.js.bak", "INDEX.HTML",
                                  "__init__.py"])
def test_nothing_but_the_shipped_files_is_served(world, name):
    answer = world.client.http.get(f"/console/{name}")
    assert answer.status_code == 404 and set(answer.json_body) == {"Code", "Message"}


def test_recent_predictions_carry_a_url_that_fetches_their_image(world):
    world.upload("incoming/seven.png", png_bytes(7))
    world.drain("on_incoming_image", "image-pipeline-test-incoming")
    [item] = world.client.http.get("/predictions").json_body["items"]
    assert item["image_key"] == "incoming/seven.png" and item["expires_in"] == settings().review_url_seconds
    assert requests.get(item["url"]).content == png_bytes(7)


def test_a_runs_report_is_read_from_its_final_jobs_output_archive(world):
    job = "ip-test-r270115080000-abcdef-final"
    stores().runs.create("r270115080000-abcdef", world.clock[0], status="DEPLOYED", training_job=job)
    stores().runs.create("r270115090000-abcdef", world.clock[0], status="TRAINING", training_job=job + "x")
    stores().runs.create("r270115100000-abcdef", world.clock[0], status="REJECTED", training_job=job + "y")
    report = "<html><body>loss curves <img src='data:image/png;base64,AAAA'></body></html>"
    world.s3.put_object(Bucket=BUCKET, Key=reports.output_key(settings(), job), Body=gzipped_tar({
        "profiler/trace.json": b"{}" * 1000, "report/report.html": report.encode(), "metrics.json": b"{}"}))
    answer = world.client.http.get("/runs/r270115080000-abcdef/report")
    assert answer.status_code == 200 and answer.headers["Content-Type"] == "text/html; charset=utf-8"
    assert answer.body.decode() == report
    for run_id, why in (("r270115090000-abcdef", "no final job report yet"), ("r270115100000-abcdef", "left no output"),
                        ("r270115110000-abcdef", "no run")):
        missing = world.client.http.get(f"/runs/{run_id}/report")
        assert missing.status_code == 404 and why in missing.json_body["Message"], run_id


def test_an_archive_without_a_report_answers_404(world):
    job = "ip-test-r270115080000-abcdef-final"
    stores().runs.create("r270115080000-abcdef", world.clock[0], status="DEPLOYED", training_job=job)
    world.s3.put_object(Bucket=BUCKET, Key=reports.output_key(settings(), job), Body=gzipped_tar({"metrics.json": b"{}"}))
    missing = world.client.http.get("/runs/r270115080000-abcdef/report")
    assert missing.status_code == 404 and "wrote no report" in missing.json_body["Message"]


def test_the_report_read_is_granted_on_final_job_archives_only(app_env, monkeypatch):
    import json

    from infra import policies

    from . import iam
    from .conftest import ENV, REGION

    iam.enable_string_like(monkeypatch)
    policy = json.dumps(policies.resolve(policies.policy(ENV), REGION, "123456789012"))
    job = reports.output_key(settings(), "ip-test-r270115080000-abcdef-final")
    # The report's archive, and beside it the model's, which the drift check reads (chalice_app/drift_reference.py).
    for key in (job, job.replace("output.tar.gz", "model.tar.gz")):
        assert iam.denial(policy, "s3", "GetObject", {"Bucket": BUCKET, "Key": key}, REGION, "123456789012") is None
    for key in ("sagemaker/tuning/t-1/output/output.tar.gz", "sagemaker/tuning/t-1/output/model.tar.gz",
                "sagemaker/debug/x/output/output.tar.gz"):
        assert "s3:GetObject" in iam.denial(policy, "s3", "GetObject", {"Bucket": BUCKET, "Key": key}, REGION,
                                            "123456789012"), key
