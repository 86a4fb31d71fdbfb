"""The Cognito user pool a stage with AUTH=cognito signs its console's users in with
(chalice_app/auth.py), as template resources that `infra.package` adds to that stage only.

- The pool: users are created by an administrator only (`aws cognito-idp admin-create-user`), as
  the console shows predictions, images and hyperparameters; e-mail is the user name; passwords of
  12+ characters; TOTP MFA when a user sets it up. It lives and dies with the stack (unlike the
  data, it is not retained: a kept pool would hold its users where a new stack cannot find them).
- Its hosted UI's domain: the stage's COGNITO_DOMAIN, one definition shared with the functions
  (`<prefix>.auth.<region>.amazoncognito.com`; the prefix must be unique in the region, so it names
  the account).
- The console's app client: a public client (no secret can be kept in a page), the authorization
  code flow with PKCE only, the console's own URL as its only callback and sign-out URL. Its name
  is how the API finds its id (chalice_app/sign_in.py): the client's URLs name the API, so the
  API's functions cannot name the client (a dependency cycle).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from chalice_app.auth import console_client_name
from chalice_app.sign_in import SCOPES

POOL, DOMAIN, CLIENT = "ConsoleUserPool", "ConsoleUserPoolDomain", "ConsoleUserPoolClient"
HOSTED_UI_SUFFIX = ".auth.${AWS::Region}.amazoncognito.com"


def domain_prefix(cognito_domain: str) -> str:
    """The stage's COGNITO_DOMAIN without its region's suffix: what UserPoolDomain takes."""
    if not cognito_domain.endswith(HOSTED_UI_SUFFIX):
        raise ValueError(f"COGNITO_DOMAIN {cognito_domain!r} must end with {HOSTED_UI_SUFFIX!r}")
    return cognito_domain[: -len(HOSTED_UI_SUFFIX)]


def console_url(api_stage: str) -> dict[str, str]:
    return {"Fn::Sub": f"https://${{RestAPI}}.execute-api.${{AWS::Region}}.${{AWS::URLSuffix}}/{api_stage}/console"}


def resources(env: Mapping[str, str], api_stage: str) -> dict[str, Any]:
    url = console_url(api_stage)
    return {
        POOL: {
            "Type": "AWS::Cognito::UserPool",
            "DeletionPolicy": "Delete",
            "UpdateReplacePolicy": "Delete",
            "Properties": {
                "UserPoolName": {"Fn::Sub": "image-pipeline-${Stage}-console"},
                "AdminCreateUserConfig": {"AllowAdminCreateUserOnly": True},
                "UsernameAttributes": ["email"],
                "AutoVerifiedAttributes": ["email"],
                "Policies": {"PasswordPolicy": {"MinimumLength": 12, "RequireLowercase": True,
                                                "RequireUppercase": True, "RequireNumbers": True,
                                                "RequireSymbols": False, "TemporaryPasswordValidityDays": 7}},
                "MfaConfiguration": "OPTIONAL",
                "EnabledMfas": ["SOFTWARE_TOKEN_MFA"],
                "AccountRecoverySetting": {"RecoveryMechanisms": [{"Name": "verified_email", "Priority": 1}]},
            },
        },
        DOMAIN: {
            "Type": "AWS::Cognito::UserPoolDomain",
            "Properties": {"Domain": {"Fn::Sub": domain_prefix(env["COGNITO_DOMAIN"])}, "UserPoolId": {"Ref": POOL}},
        },
        CLIENT: {
            "Type": "AWS::Cognito::UserPoolClient",
            "Properties": {
                "ClientName": console_client_name(env["NAME_PREFIX"]),
                "UserPoolId": {"Ref": POOL},
                "GenerateSecret": False,
                "AllowedOAuthFlowsUserPoolClient": True,
                "AllowedOAuthFlows": ["code"],
                "AllowedOAuthScopes": SCOPES.split(),
                "SupportedIdentityProviders": ["COGNITO"],
                "CallbackURLs": [url],
                "LogoutURLs": [url],
                "ExplicitAuthFlows": ["ALLOW_USER_SRP_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"],
                "PreventUserExistenceErrors": "ENABLED",
                "EnableTokenRevocation": True,
                # An hour's ID token, a working day's refresh: the page refreshes silently within it.
                "IdTokenValidity": 60, "AccessTokenValidity": 60, "RefreshTokenValidity": 12,
                "TokenValidityUnits": {"IdToken": "minutes", "AccessToken": "minutes", "RefreshToken": "hours"},
            },
        },
    }


def outputs(api_stage: str) -> dict[str, Any]:
    return {"ConsoleUrl": {"Value": console_url(api_stage)},
            "ConsoleUserPoolId": {"Value": {"Ref": POOL},
                                  "Description": "aws cognito-idp admin-create-user --user-pool-id <this> "
                                                 "--username <e-mail> adds a console user"}}
