"""moto as this project runs it: every patch applied together, and undone exactly.

The patches (`local_aws.moto_sqs`, `moto_dispatch`, `moto_dynamodb`) change moto's classes
and modules for the whole process, so they are applied once, explicitly, by whoever owns
the process: `python -m local_aws.moto_server` at its start, the tests for their session
(so in-process moto answers as the stack's does, whatever the tests' order).

    with MotoPatches():        # or patches = MotoPatches(); patches.apply(); ...; patches.undo()
        ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Self

from .moto_dispatch import make_dispatch_memoised
from .moto_dynamodb import make_lexing_memoised, make_transactions_item_scoped
from .moto_sqs import make_sqs_linear
from .patching import Patches

PATCHES: tuple[Callable[[Patches], None], ...] = (
    make_sqs_linear, make_dispatch_memoised, make_lexing_memoised, make_transactions_item_scoped)

_applied: MotoPatches | None = None  # moto is one per process: so are its patches


class MotoPatches:
    def __init__(self) -> None:
        self._patches = Patches()

    def apply(self) -> None:
        """Patch moto in this process; refused while it is patched (a second layer could not be undone in order)."""
        global _applied
        if _applied is not None:
            raise RuntimeError("moto is already patched in this process")
        try:
            for patch in PATCHES:
                patch(self._patches)
        except BaseException:
            self._patches.undo()
            raise
        _applied = self

    def undo(self) -> None:
        """Put moto back as it was before apply() (nothing, if these patches are not applied)."""
        global _applied
        if _applied is self:
            self._patches.undo()
            _applied = None

    def __enter__(self) -> Self:
        self.apply()
        return self

    def __exit__(self, *_: object) -> None:
        self.undo()
