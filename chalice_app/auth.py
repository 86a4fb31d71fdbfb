"""Who may call the HTTP API, per stage (`AUTH`): one authoriser on every data route.

    none      the local stage: open, as the stack listens on this machine only
    iam       SigV4-signed requests (scripts with AWS credentials); a browser cannot sign them
    cognito   an ID token of the stage's Cognito user pool in `Authorization`: what the console
              sends after its hosted-UI sign-in, and what a script gets from InitiateAuth

The console's own static files and `GET /sign-in` (how to sign in) stay open on every stage: a
browser must load them before anyone has signed in, and they hold no data.
"""

from __future__ import annotations

from collections.abc import Mapping

from chalice import CognitoUserPoolAuthorizer, IAMAuthorizer

from .config import ConfigError, auth_mode
# API Gateway's authoriser takes the ID token (no OAuth scope is asked for on the methods).
TOKEN_HEADER = "Authorization"


def console_client_name(name_prefix: str) -> str:
    """The user pool's app client the console signs in with (infra/console_users.py creates it)."""
    return f"{name_prefix}-console"


def route_authorizer(env: Mapping[str, str]) -> IAMAuthorizer | CognitoUserPoolAuthorizer | None:
    """The stage's authoriser, read when app.py is imported (packaging reads it from there)."""
    mode = auth_mode(env)
    if mode == "iam":
        return IAMAuthorizer()
    if mode == "cognito":
        pool_arn = env.get("COGNITO_USER_POOL_ARN", "")
        if not pool_arn:
            raise ConfigError("AUTH=cognito needs COGNITO_USER_POOL_ARN (see .chalice/config.json)")
        return CognitoUserPoolAuthorizer("ConsoleUsers", provider_arns=[pool_arn], header=TOKEN_HEADER)
    return None
