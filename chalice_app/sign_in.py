"""`GET /sign-in`: how a browser signs in to this stage's API (chalice_app/auth.py).

With AUTH=cognito the console signs in through the user pool's hosted UI with the
authorization-code flow and PKCE, as a public client (no secret in a page). What it needs is
built here from the stage's settings; only the app client's id is not a setting: CloudFormation
generates it, and the client's callback URL names the API, so the API's functions cannot name
the client in their environment (that would be a dependency cycle). It is looked up once per
container by the client's name (ListUserPoolClients, granted on this stage's pool only).
"""

from __future__ import annotations

from functools import cache
from typing import Any

from chalice import ChaliceViewError

from . import aws
from .auth import console_client_name
from .config import Settings, settings

SCOPES = "openid email"


def sign_in_settings(config: Settings, client_id: str | None) -> dict[str, Any]:
    """The answer: the mode, and for cognito the hosted UI's endpoints and the client."""
    if config.auth != "cognito":
        return {"mode": config.auth}
    base = f"https://{config.cognito_domain}"
    return {"mode": "cognito", "client_id": client_id, "scopes": SCOPES,
            "authorize_url": f"{base}/oauth2/authorize", "token_url": f"{base}/oauth2/token",
            "logout_url": f"{base}/logout"}


@cache
def console_client_id(pool_id: str, name: str) -> str:
    """The id of the pool's app client called `name` (cached: it never changes for a stack)."""
    pages = aws.client("cognito-idp").get_paginator("list_user_pool_clients")
    for page in pages.paginate(UserPoolId=pool_id, PaginationConfig={"PageSize": 60}):
        for client in page["UserPoolClients"]:
            if client["ClientName"] == name:
                return client["ClientId"]
    raise ChaliceViewError(f"the user pool {pool_id} has no app client named {name!r}")


def sign_in() -> dict[str, Any]:
    config = settings()
    client_id = None
    if config.auth == "cognito":
        client_id = console_client_id(config.cognito_user_pool_id, console_client_name(config.name_prefix))
    return sign_in_settings(config, client_id)
