"""moto 5.2's request routing, memoised: the same backends and actions, found once instead of per request.

Measured on the stack (py-spy, `bench/e2e.py`'s traffic replayed one image at a time):
before any service code runs, every request made moto's server look its backend up from
the host name it infers, by listing moto's package directory (an `isdir` per service,
some 200) and then trying every service's URL pattern in turn, under one lock that all
requests share: 18% of the moto process's time. Then each response class listed its
own methods with `inspect.getmembers` to check that the action is one: 2%. And moto's
Flask apps run in debug mode, where Flask gives every request that reads a form (SQS's
and DynamoDB's bodies too) a freshly made subclass of its `files` dict, only so that a
missing upload in a non-multipart form raises a more helpful KeyError: 5%.

The first two answers depend only on their argument (a host name; a class) and on moto's
installed code (its directories, its URL patterns), so `make_dispatch_memoised(patches)` caches
them per argument; it also skips the debug helper (moto never reads `files` outside a
multipart upload, where the helper does not apply). A moto that changed shape fails
loudly here instead of silently losing the change.
"""

from __future__ import annotations

import functools
from typing import Any

import flask
import moto.core.responses as core_responses
import werkzeug.wrappers
from moto.core.utils import method_names_from_class
from moto.moto_server.werkzeug_app import BackendRequest, DomainDispatcherApplication

from .patching import Patches

# moto's own lookup, kept for the memoised one (and for the tests comparing the two).
moto_backend_for_host = getattr(DomainDispatcherApplication, "get_backend_for_host", None)


def make_dispatch_memoised(patches: Patches) -> None:
    """Patch moto's server routing in this process, recorded in `patches`."""
    lookup = moto_backend_for_host
    if (lookup is None or getattr(core_responses, "method_names_from_class", None) is not method_names_from_class
            or "_load_form_data" not in vars(flask.Request) or "_load_form_data" not in vars(werkzeug.wrappers.Request)):
        raise RuntimeError("moto's server routing changed shape; review local_aws/moto_dispatch.py")

    def get_backend_for_host(self: DomainDispatcherApplication, host: str | None) -> Any:
        known = self.__dict__.setdefault("_backends_by_host", {})
        if host not in known:
            known[host] = lookup(self, host)
        return known[host]

    patches.replace(DomainDispatcherApplication, "get_backend_for_host", get_backend_for_host)
    patches.replace(core_responses, "method_names_from_class", functools.lru_cache(maxsize=None)(method_names_from_class))
    patches.replace(BackendRequest, "_load_form_data", werkzeug.wrappers.Request._load_form_data)
