"""Attribute replacements on classes and modules, recorded with what they replaced, undone exactly."""

from __future__ import annotations

from typing import Any

_ABSENT = object()  # the owner had no attribute of its own by that name (it inherited one, or none)


class Patches:
    """`patches.replace(owner, name, value)` as many times as needed; `patches.undo()` puts everything back."""

    def __init__(self) -> None:
        self._originals: list[tuple[Any, str, Any]] = []

    def replace(self, owner: Any, name: str, value: Any) -> None:
        """Set `owner.name` (a class's or module's own attribute), keeping what was there."""
        self._originals.append((owner, name, vars(owner).get(name, _ABSENT)))
        setattr(owner, name, value)

    def undo(self) -> None:
        """Newest first, so an attribute replaced twice ends as it began; an inherited one is inherited again."""
        while self._originals:
            owner, name, original = self._originals.pop()
            if original is _ABSENT:
                delattr(owner, name)
            else:
                setattr(owner, name, original)
