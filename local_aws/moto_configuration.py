"""Configuration moto holds besides data, kept as the requests that set it and replayed at start.

A bucket's subresources (notification, lifecycle, encryption, policy...: a bucket-level PUT
or DELETE with a query) and EventBridge's rules, targets and rule states are what wires S3
and EventBridge to SQS; a moto that lost them after a restart would drop notifications and
events that AWS delivers. Each such request, once moto answered it 2xx, is stored under a
name for what it sets (`changes`): the latest request per name wins, and a delete drops every
name under what it deleted. `replay` sends them to moto again, in the order they were set,
before it listens. Not covered: EventBridge's buses, archives and connections.

Names end with "/", so that a dropped prefix never takes a sibling along ("rule-1/" is not
under "rule/").
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from werkzeug.test import EnvironBuilder

Scope = tuple[str, str, str]  # (account, region, service) of a signed request
Changes = list[tuple[str, dict[str, Any] | None]]
_EVENTS = ("AWSEvents.PutRule", "AWSEvents.PutTargets", "AWSEvents.RemoveTargets", "AWSEvents.DeleteRule",
           "AWSEvents.EnableRule", "AWSEvents.DisableRule")


def _bucket_request(environ: dict[str, Any]) -> tuple[str, dict[str, list[str]]] | None:
    """(bucket, query) of a bucket-level request (path-style, no key), else None."""
    path = environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8")
    bucket, _, key = path.lstrip("/").partition("/")
    if not bucket or key:
        return None
    return bucket, parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)


def sets_configuration(scope: Scope, environ: dict[str, Any]) -> bool:
    """Whether this request may set configuration (its body is then needed)."""
    if scope[2] == "s3":
        return environ["REQUEST_METHOD"] in ("PUT", "DELETE") and _bucket_request(environ) is not None
    return scope[2] == "events" and environ.get("HTTP_X_AMZ_TARGET", "") in _EVENTS


def _request(environ: dict[str, Any], body: bytes) -> dict[str, Any]:
    headers = {name[5:].replace("_", "-").title(): value for name, value in environ.items()
               if name.startswith("HTTP_")}
    if environ.get("CONTENT_TYPE"):
        headers["Content-Type"] = environ["CONTENT_TYPE"]
    return {"method": environ["REQUEST_METHOD"], "path": environ.get("PATH_INFO", ""),
            "query": environ.get("QUERY_STRING", ""), "headers": headers, "body": body}


def changes(scope: Scope, environ: dict[str, Any], body: bytes) -> Changes:
    """What an answered (2xx) request set or dropped, in order."""
    account, region, service = scope
    if service == "s3":
        bucket, query = _bucket_request(environ) or ("", {})
        if not bucket or (environ["REQUEST_METHOD"] == "PUT" and not query):
            return []  # CreateBucket: the bucket itself is data (`moto_store`)
        name = f"s3/{account}/{bucket}/" + ("&".join(sorted(query)) + "/" if query else "")
        return [(name, _request(environ, body) if environ["REQUEST_METHOD"] == "PUT" else None)]
    operation = environ["HTTP_X_AMZ_TARGET"].partition(".")[2]
    request = json.loads(body or b"{}")
    bus = request.get("EventBusName") or "default"
    rule = f"events/{account}/{region}/{bus.rpartition('/')[2]}/{request.get('Name') or request.get('Rule')}/"
    if operation == "PutRule":
        return [(rule + "rule/", _request(environ, body))]
    if operation in ("EnableRule", "DisableRule"):
        return [(rule + "state/", _request(environ, body))]
    if operation == "DeleteRule":
        return [(rule, None)]
    if operation == "RemoveTargets":
        return [(f"{rule}target/{target}/", None) for target in request["Ids"]]
    # PutTargets: one request per target, so that removing one leaves the others set.
    return [(f"{rule}target/{target['Id']}/", _request(environ, json.dumps({**request, "Targets": [target]}).encode()))
            for target in request["Targets"]]


def replay(requests: Iterable[dict[str, Any]], application: Callable) -> list[str]:
    """Send the stored requests to `application` (moto's, not yet listening); the failures' statuses."""
    failures = []
    for request in requests:
        environ = EnvironBuilder(path=request["path"], method=request["method"], query_string=request["query"],
                                 headers=request["headers"], data=request["body"]).get_environ()
        answered: list[str] = []
        body = application(environ, lambda status, headers, exc_info=None: answered.append(status))
        b"".join(body)
        if not answered or answered[0][:1] != "2":
            failures.append(f"{request['method']} {request['path']}?{request['query']}: {answered[:1]}")
    return failures
