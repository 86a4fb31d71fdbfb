"""What the stack started, on disk, so that a stack starting after one that died ends what is left.

The stack names the file in `RECORD_ENV`; each place that starts a process calls `record(pid)`
(nothing is written where no file is named), which appends the pid and its start time.
`end_recorded(path)` SIGKILLs every recorded process still alive with the same start time
(a reused pid is someone else's) and the process group it leads, then empties the file.
This is the second means beside `owner_watch` (each child ends itself when its owner dies).
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .owner_watch import live_stat, start_time

RECORD_ENV = "LOCAL_AWS_PROCESS_RECORD"


@dataclass(frozen=True)
class Recorded:
    pid: int
    start_time: int
    command: str


def record(pid: int, command: str = "") -> None:
    """Append `pid` to the file `RECORD_ENV` names, if any; a process already gone is not recorded."""
    path = os.environ.get(RECORD_ENV)
    started = start_time(pid)
    if not path or started is None:
        return
    line = json.dumps(asdict(Recorded(pid, started, command[:200]))) + "\n"
    with open(path, "a", encoding="utf-8") as file:  # one short append: whole lines, from any thread
        file.write(line)


def read_record(path: Path) -> list[Recorded]:
    if not path.exists():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entries.append(Recorded(**json.loads(line)))
        except (ValueError, TypeError):
            continue  # a line cut short by the death of the process writing it
    return entries


def _group_members(pgid: int) -> list[tuple[int, int]]:
    """(pid, start time) of every live process in the group `pgid`."""
    members = []
    for entry in Path("/proc").iterdir():
        stat = live_stat(int(entry.name)) if entry.name.isdigit() else None
        if stat and stat[1] == pgid:
            members.append((int(entry.name), stat[0]))
    return members


def end_recorded(path: Path, timeout: float = 10.0) -> list[Recorded]:
    """End what `path` records that still runs (with its group); returns what was ended once all of
    it is gone (or a zombie): its memory and ports are free before anything new starts."""
    ended = [entry for entry in read_record(path) if start_time(entry.pid) == entry.start_time]
    doomed = []  # (pid, start time) of each process ended, group members included
    for entry in ended:
        try:
            if os.getpgid(entry.pid) == entry.pid:
                doomed += _group_members(entry.pid)
                os.killpg(entry.pid, signal.SIGKILL)
            else:
                doomed.append((entry.pid, entry.start_time))
                os.kill(entry.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while any(start_time(pid) == started for pid, started in doomed) and time.monotonic() < deadline:
        time.sleep(0.05)
    path.unlink(missing_ok=True)
    return ended
