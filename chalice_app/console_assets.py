"""The web console's static files (chalice_app/console/), served by the app itself: no build step,
no framework, nothing fetched from elsewhere. Only the shipped names are served (no path from the
request ever reaches the file system), each with its media type; every file is text, so API
Gateway needs no binary media types for them."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

from chalice import NotFoundError, Response

CONSOLE_DIR = Path(__file__).resolve().parent / "console"
INDEX = "index.html"
# The shipped set: name -> media type. A file not named here is never served.
ASSETS = {INDEX: "text/html; charset=utf-8", "console.js": "text/javascript; charset=utf-8",
          "sign_in.js": "text/javascript; charset=utf-8", "console.css": "text/css; charset=utf-8"}
# The hash of the training report's one <style> element (training/report.py, kept equal by a test):
# where the API takes a token, the page opens a report from memory, and such a page keeps this policy.
REPORT_STYLE = "'sha256-jliTZXsk09wHvWmFnML3jTJLpqm58dyRAD41Y+f6SO0='"
# The page loads only its own scripts and style; images come from presigned S3 URLs (another
# origin locally and on AWS), and the uploads go to S3 too, the sign-in to Cognito's hosted UI.
POLICY = (f"default-src 'self'; script-src 'self'; style-src 'self' {REPORT_STYLE}; "
          "img-src 'self' data: http: https:; connect-src 'self' http: https:; frame-ancestors 'none'; "
          "base-uri 'none'; form-action 'none'")


@dataclass(frozen=True)
class Asset:
    name: str
    media_type: str
    body: str


@cache
def asset(name: str) -> Asset:
    """One shipped file, read once per container; NotFoundError (404) for any other name."""
    if name not in ASSETS:
        raise NotFoundError(f"no console file {name!r}")
    return Asset(name, ASSETS[name], (CONSOLE_DIR / name).read_text(encoding="utf-8"))


def response(name: str) -> Response:
    found = asset(name)
    # no-cache: revalidated on each load, so a deploy is seen at once; they are small.
    return Response(body=found.body, status_code=200,
                    headers={"Content-Type": found.media_type, "Cache-Control": "no-cache",
                             "Content-Security-Policy": POLICY, "X-Content-Type-Options": "nosniff"})
