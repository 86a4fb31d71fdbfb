"""What every List* operation shares: filters, sort order and paging."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any


def paginate(items: list[dict[str, Any]], params: dict[str, Any], key: str) -> dict[str, Any]:
    """List* paging: NextToken is the offset of the next page."""
    start = int(params.get("NextToken") or 0)
    size = int(params.get("MaxResults") or 100)
    page = items[start:start + size]
    answer: dict[str, Any] = {key: page}
    if start + size < len(items):
        answer["NextToken"] = str(start + size)
    return answer


def filter_and_sort(records: Iterable[Any], params: dict[str, Any], *, name: Callable[[Any], str],
                    status: Callable[[Any], str] | None = None) -> list[Any]:
    """The filters every List* operation shares: NameContains, StatusEquals, times, SortBy/SortOrder."""
    chosen = list(records)
    if params.get("NameContains"):
        chosen = [r for r in chosen if params["NameContains"] in name(r)]
    if params.get("StatusEquals") and status:
        chosen = [r for r in chosen if status(r) == params["StatusEquals"]]
    for key, keep in (("CreationTimeAfter", lambda r, t: r.creation_time > t),
                      ("CreationTimeBefore", lambda r, t: r.creation_time < t)):
        if params.get(key) is not None:
            limit = params[key].timestamp() if hasattr(params[key], "timestamp") else float(params[key])
            chosen = [r for r in chosen if keep(r, limit)]
    sort_by = params.get("SortBy", "CreationTime")
    sort_key = {"Name": name, "Status": status or name}.get(sort_by, lambda r: r.creation_time)
    return sorted(chosen, key=sort_key, reverse=params.get("SortOrder", "Descending") == "Descending")
