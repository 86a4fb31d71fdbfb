"""The console's sign-in on a stage with AUTH=cognito, in a real browser: the app's API (Chalice's
local server) over moto, whose user pool holds the console's app client and a user; Cognito's hosted
UI, which moto does not serve, is played by the test at the network layer (Playwright's routing),
checking what the page sends it: the authorization-code flow with PKCE (S256), the registered
redirect, a state it checks. The ID token is moto's own, issued to the user."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import boto3
import pytest
import requests

from local_aws.ports import free_port
from local_aws.project.infra import apply, render
from local_aws.project.stage import load_stage

from .conftest import SCREENSHOTS, wait_until

ROOT = Path(__file__).resolve().parents[2]
DOMAIN = "image-pipeline-local-123456789012.auth.us-east-1.amazoncognito.com"
EMAIL, PASSWORD = "ana@example.com", "Correct-horse-battery-9"


@dataclass
class HostedUI:
    """Cognito's hosted UI as the page meets it: /oauth2/authorize redirects back with a code,
    /oauth2/token exchanges it (only with the verifier of the challenge it was asked with)."""

    client_id: str
    console: str
    id_token: str
    authorizations: list[dict[str, str]] = field(default_factory=list)
    exchanges: list[dict[str, str]] = field(default_factory=list)
    refreshes: list[dict[str, str]] = field(default_factory=list)
    sign_outs: list[dict[str, str]] = field(default_factory=list)

    def handle(self, route: Any) -> None:
        request = route.request
        url = urlsplit(request.url)
        if url.path == "/oauth2/authorize":
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            self.authorizations.append(query)
            back = urlencode({"code": f"code-{len(self.authorizations)}", "state": query["state"]})
            route.fulfill(status=302, headers={"Location": f"{query['redirect_uri']}?{back}"})
        elif url.path == "/oauth2/token":
            form = {k: v[0] for k, v in parse_qs(request.post_data).items()}
            cors = {"Access-Control-Allow-Origin": request.headers["origin"]}
            if form["grant_type"] == "refresh_token":
                self.refreshes.append(form)
                valid = form["client_id"] == self.client_id and form["refresh_token"] == "refresh"
                # Cognito's refresh answers new ID and access tokens, not a new refresh token.
                tokens = {"id_token": self.id_token, "access_token": "access", "expires_in": 3600,
                          "token_type": "Bearer"}
            else:
                self.exchanges.append(form)
                asked = self.authorizations[-1]
                verifier_hash = base64.urlsafe_b64encode(hashlib.sha256(form["code_verifier"].encode()).digest())
                valid = (form["grant_type"] == "authorization_code" and form["client_id"] == self.client_id
                         and form["code"] == f"code-{len(self.authorizations)}"
                         and form["redirect_uri"] == asked["redirect_uri"]
                         and verifier_hash.decode().rstrip("=") == asked["code_challenge"])
                tokens = {"id_token": self.id_token, "access_token": "access", "refresh_token": "refresh",
                          "expires_in": 3600, "token_type": "Bearer"}
            route.fulfill(status=200 if valid else 400, headers=cors, json=tokens if valid else {"error": "invalid_grant"})
        elif url.path == "/logout":
            self.sign_outs.append({k: v[0] for k, v in parse_qs(url.query).items()})
            route.fulfill(status=200, content_type="text/html", body="<p>signed out</p>")
        else:
            route.fulfill(status=404, body="not the hosted UI")


@pytest.fixture
def cognito_api(moto_url, monkeypatch) -> Iterator[tuple[str, HostedUI]]:
    """The local stage's API with AUTH=cognito; its user pool, app client and user in moto."""
    idp = boto3.client("cognito-idp")
    pool = idp.create_user_pool(PoolName="image-pipeline-local-console", UsernameAttributes=["email"],
                                AdminCreateUserConfig={"AllowAdminCreateUserOnly": True})["UserPool"]
    client_id = idp.create_user_pool_client(
        UserPoolId=pool["Id"], ClientName="ip-local-console", GenerateSecret=False, AllowedOAuthFlows=["code"],
        AllowedOAuthScopes=["openid", "email"], AllowedOAuthFlowsUserPoolClient=True,
        ExplicitAuthFlows=["ALLOW_ADMIN_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"])["UserPoolClient"]["ClientId"]
    idp.admin_create_user(UserPoolId=pool["Id"], Username=EMAIL, UserAttributes=[{"Name": "email", "Value": EMAIL}])
    idp.admin_set_user_password(UserPoolId=pool["Id"], Username=EMAIL, Password=PASSWORD, Permanent=True)
    id_token = idp.admin_initiate_auth(UserPoolId=pool["Id"], ClientId=client_id, AuthFlow="ADMIN_USER_PASSWORD_AUTH",
                                       AuthParameters={"USERNAME": EMAIL, "PASSWORD": PASSWORD}
                                       )["AuthenticationResult"]["IdToken"]
    stage = load_stage("local")
    apply(render(stage), boto3.Session())  # the stage's bucket, tables and queues
    _a_deployed_run_with_its_report(stage.environment)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.e2e.api_alone", str(port), "AUTH=cognito",
         f"COGNITO_USER_POOL_ARN={pool['Arn']}", f"COGNITO_USER_POOL_ID={pool['Id']}", f"COGNITO_DOMAIN={DOMAIN}"],
        cwd=ROOT, env={**os.environ, "AWS_SESSION_TOKEN": "testing"}, stdin=subprocess.DEVNULL)
    api = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(f"{api}/sign-in"), 120, "the API on its port", every=0.3)
        yield api, HostedUI(client_id=client_id, console=f"{api}/console", id_token=id_token)
    finally:
        server.terminate()
        server.wait(30)


RUN_ID, FINAL_JOB = "r261201020000-abcdef", "ip-local-r261201020000-abcdef-final"


def _a_deployed_run_with_its_report(env: dict[str, str]) -> None:
    """A run as the pipeline leaves it, and its final job's output archive holding a report styled as
    training/report.py styles it (one inline <style>, which the console's policy allows by hash)."""
    from training.report import _CSS

    page = (f"<!DOCTYPE html><html><head><title>Training report</title><style>{_CSS}</style></head>"
            "<body><h1>Training report</h1><p>confusion matrix</p></body></html>").encode()
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        member = tarfile.TarInfo("report/report.html")
        member.size = len(page)
        tar.addfile(member, io.BytesIO(page))
    boto3.client("s3").put_object(Bucket=env["BUCKET"], Key=f"{env['OUTPUT_PREFIX']}final/{FINAL_JOB}/output/output.tar.gz",
                                  Body=archive.getvalue())
    boto3.resource("dynamodb").Table(env["PIPELINE_TABLE"]).put_item(Item={
        "pk": "RUN", "sk": RUN_ID, "run_id": RUN_ID, "status": "DEPLOYED", "training_job": FINAL_JOB,
        "created_at": Decimal("1796090400")})


def pump_until(page: Any, check: Any, what: str, timeout_ms: int = 60_000) -> None:
    """Wait in the browser's time: Playwright's sync API runs the routes (the hosted UI) only while
    the test is inside one of its calls, never while it sleeps."""
    for _ in range(timeout_ms // 100):
        if check():
            return
        page.wait_for_timeout(100)
    raise AssertionError(f"{what}: not within {timeout_ms / 1000:.0f} s")


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=5).status_code == 200
    except requests.ConnectionError:
        return False


@pytest.fixture
def page(browser, cognito_api) -> Iterator[tuple[Any, str, HostedUI, list[tuple[str, str | None]]]]:
    api, hosted_ui = cognito_api
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.route("https://*.amazoncognito.com/**", hosted_ui.handle)
    page = context.new_page()
    page.set_default_timeout(60_000)
    errors: list[str] = []
    calls: list[tuple[str, str | None]] = []  # (path, Authorization) of each API call the page makes
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("request", lambda request: calls.append((urlsplit(request.url).path, request.headers.get("authorization")))
            if request.url.startswith(api) and request.resource_type == "fetch" else None)
    yield page, api, hosted_ui, calls
    context.close()
    assert not errors, errors


def test_the_console_signs_in_with_pkce_and_sends_the_id_token_with_every_call(page):
    page, api, hosted_ui, calls = page
    page.goto(f"{api}/console#predictions")
    page.wait_for_selector(f"#user:has-text('{EMAIL}')")
    page.wait_for_selector("body[data-loaded='true']")

    [asked] = hosted_ui.authorizations
    assert asked["client_id"] == hosted_ui.client_id and asked["response_type"] == "code"
    assert asked["code_challenge_method"] == "S256" and asked["redirect_uri"] == hosted_ui.console
    assert asked["scope"] == "openid email"
    assert len(hosted_ui.exchanges) == 1  # and the test's hosted UI checked the verifier against the challenge
    assert page.url == f"{api}/console#predictions"  # the code is gone from the address, the view kept
    data_calls = [(path, token) for path, token in calls if path != "/sign-in"]
    assert {path for path, _ in data_calls} >= {"/models", "/runs", "/predictions", "/review", "/drift"}
    assert {token for _, token in data_calls} == {hosted_ui.id_token}
    page.screenshot(path=SCREENSHOTS / "signed-in.png", full_page=True)

    # A run's report, one click away: fetched with the token (a navigation would carry none) and
    # opened from memory, styled, under the console's policy.
    page.click("a[href='#overview']")
    with page.context.expect_page() as opened:
        page.click(f"#runs li.run[data-run-id='{RUN_ID}'] a.report")
    report = opened.value
    report.wait_for_selector("h1:has-text('Training report')")
    assert report.evaluate("getComputedStyle(document.body).maxWidth") == "1100px"  # its <style> applied
    assert (f"/runs/{RUN_ID}/report", hosted_ui.id_token) in calls

    # A reload keeps the tab's session: no new trip through the hosted UI.
    page.reload()
    page.wait_for_selector("body[data-loaded='true']")
    assert len(hosted_ui.authorizations) == 1 and hosted_ui.refreshes == []
    # An ID token about to expire is refreshed once with the refresh token, not signed in again.
    page.evaluate("""() => { const key = 'image-pipeline-console:session';
        const session = JSON.parse(sessionStorage.getItem(key)); session.expires_at = Date.now();
        sessionStorage.setItem(key, JSON.stringify(session)); }""")
    calls.clear()
    page.reload()
    page.wait_for_selector("body[data-loaded='true']")
    assert len(hosted_ui.refreshes) == 1 and len(hosted_ui.authorizations) == 1
    assert {token for path, token in calls if path != "/sign-in"} == {hosted_ui.id_token}


def test_a_refused_token_signs_in_again_and_sign_out_ends_the_session(page):
    page, api, hosted_ui, _ = page
    page.goto(f"{api}/console")
    page.wait_for_selector("body[data-loaded='true']")
    # The API refuses the token once (say the user's session was revoked): the page signs in again.
    refused: list[str] = []

    def refuse_once(route: Any) -> None:
        if refused:
            route.continue_()
        else:
            refused.append(route.request.url)
            route.fulfill(status=401, json={"message": "Unauthorized"})

    page.route("**/models", refuse_once)
    pump_until(page, lambda: len(hosted_ui.exchanges) == 2, "a second sign-in")
    page.wait_for_selector(f"#user:has-text('{EMAIL}')")
    assert refused and len(hosted_ui.authorizations) == 2

    page.click("#sign-out")
    pump_until(page, lambda: hosted_ui.sign_outs, "the hosted UI's sign-out")
    assert hosted_ui.sign_outs == [{"client_id": hosted_ui.client_id, "logout_uri": hosted_ui.console}]
    page.goto(f"{api}/console")  # signed out, the tab's session gone: the next visit signs in again
    page.wait_for_selector("body[data-loaded='true']")
    assert len(hosted_ui.authorizations) == 3
