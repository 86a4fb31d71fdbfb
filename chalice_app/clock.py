"""The time, in one place, so the quiet-window logic can be tested without sleeping."""

from __future__ import annotations

import time


def now() -> float:
    return time.time()
