"""How a browser signs in (GET /sign-in, chalice_app/sign_in.py) per stage, the console's app client
found in the stage's own user pool under the stage's enforced policy, and the stage's authoriser."""

from __future__ import annotations

import json

import boto3
import pytest
from chalice import CognitoUserPoolAuthorizer, IAMAuthorizer
from moto.core import DEFAULT_ACCOUNT_ID

from chalice_app import config, sign_in
from chalice_app.auth import route_authorizer
from chalice_app.config import ConfigError, settings_from_env
from infra import policies

from . import iam
from .conftest import ENV, REGION, enforce_stage_policy

DOMAIN = "image-pipeline-test-123456789012.auth.us-east-1.amazoncognito.com"


@pytest.fixture
def cognito(world, monkeypatch):
    """The test stage with AUTH=cognito: a user pool with decoys and the console's client."""
    idp = boto3.client("cognito-idp", region_name=REGION)
    pool = idp.create_user_pool(PoolName="image-pipeline-test-console")["UserPool"]["Id"]
    for number in range(61):  # more than one page of ListUserPoolClients before the console's
        idp.create_user_pool_client(UserPoolId=pool, ClientName=f"other-{number:02d}")
    client = idp.create_user_pool_client(UserPoolId=pool, ClientName="ip-test-console", GenerateSecret=False,
                                         AllowedOAuthFlows=["code"], AllowedOAuthScopes=["openid", "email"],
                                         AllowedOAuthFlowsUserPoolClient=True,
                                         CallbackURLs=["https://example.com/api/console"])["UserPoolClient"]
    env = {**ENV, "AUTH": "cognito", "COGNITO_USER_POOL_ID": pool, "COGNITO_DOMAIN": DOMAIN}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config.settings.cache_clear()
    sign_in.console_client_id.cache_clear()
    policy = enforce_stage_policy(monkeypatch, env)
    yield world, idp, pool, client["ClientId"], policy
    sign_in.console_client_id.cache_clear()


def test_an_open_stage_signs_nobody_in(world):
    assert world.client.http.get("/sign-in").json_body == {"mode": "none"}


def test_a_cognito_stage_names_its_hosted_ui_and_the_consoles_client(cognito):
    world, _, _, client_id, _ = cognito
    answer = world.client.http.get("/sign-in")
    assert answer.status_code == 200
    assert answer.json_body == {
        "mode": "cognito", "client_id": client_id, "scopes": "openid email",
        "authorize_url": f"https://{DOMAIN}/oauth2/authorize", "token_url": f"https://{DOMAIN}/oauth2/token",
        "logout_url": f"https://{DOMAIN}/logout"}


def test_a_pool_without_the_consoles_client_is_a_clear_error(cognito):
    world, idp, pool, client_id, _ = cognito
    idp.delete_user_pool_client(UserPoolId=pool, ClientId=client_id)
    answer = world.client.http.get("/sign-in")
    assert answer.status_code == 500
    assert answer.json_body["Message"] == f"the user pool {pool} has no app client named 'ip-test-console'"


def test_the_lookup_is_granted_on_the_stages_own_pool_only(cognito):
    _, idp, pool, _, policy = cognito
    other = idp.create_user_pool(PoolName="someone-elses")["UserPool"]["Id"]
    assert iam.denial(policy, "cognito-idp", "ListUserPoolClients", {"UserPoolId": pool}, REGION,
                      DEFAULT_ACCOUNT_ID) is None
    assert iam.denial(policy, "cognito-idp", "ListUserPoolClients", {"UserPoolId": other}, REGION,
                      DEFAULT_ACCOUNT_ID) is not None
    # An open stage's policy grants no Cognito call at all.
    assert "cognito-idp" not in json.dumps(policies.policy(ENV))


@pytest.mark.parametrize("changes, problem", [
    ({"AUTH": "password"}, "AUTH must be one of none, iam, cognito"),
    ({"AUTH": "cognito", "COGNITO_DOMAIN": DOMAIN}, "COGNITO_USER_POOL_ID is not set"),
    ({"AUTH": "cognito", "COGNITO_USER_POOL_ID": "us-east-1_abc"}, "COGNITO_DOMAIN is not set"),
])
def test_a_stage_with_an_incomplete_auth_setting_is_refused(changes, problem):
    with pytest.raises(ConfigError, match=problem):
        settings_from_env({**ENV, **changes})


def test_each_mode_has_its_authoriser():
    assert route_authorizer({}) is None and route_authorizer({"AUTH": "none"}) is None
    assert isinstance(route_authorizer({"AUTH": "iam"}), IAMAuthorizer)
    pool_arn = f"arn:aws:cognito-idp:{REGION}:{DEFAULT_ACCOUNT_ID}:userpool/us-east-1_abc"
    cognito = route_authorizer({"AUTH": "cognito", "COGNITO_USER_POOL_ARN": pool_arn})
    assert isinstance(cognito, CognitoUserPoolAuthorizer)
    assert cognito.to_swagger()["x-amazon-apigateway-authorizer"]["providerARNs"] == [pool_arn]
    with pytest.raises(ConfigError, match="COGNITO_USER_POOL_ARN"):
        route_authorizer({"AUTH": "cognito"})
