"""Every process the stack starts dies with it, even when the stack is killed (SIGKILL).

The stack names itself in the environment its children inherit (`OWNER_ENV`: its pid and
start time, so a reused pid is never taken for it). A child of ours calls `die_with_owner()`
at start: a thread watches the owner and, once it is gone, SIGKILLs the child's process
group when the child leads one (a gunicorn master and its workers: moto's, an endpoint
host's; a training job and its data loaders) or else the child alone (a group it shares may
hold a shell's other commands). Without an owner in the environment the watched process is
the parent.

A program that is not ours (the training toolkit and the script it runs) gets the watch
from this file run as its wrapper, with the standard library only:

    python -I local_aws/owner_watch.py COMMAND ...

which runs COMMAND as its child, in its own process group, and exits with its status once
it has ended what COMMAND left in the group (as a container ends with its entry point: a
killed training toolkit does not leave its script running).

A watch thread, not `prctl(PR_SET_PDEATHSIG)`: the signal fires when the *thread* that
forked the child ends, and the stack starts endpoint hosts from threads that end at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

OWNER_ENV = "LOCAL_AWS_OWNER"  # "pid:start time" of the process whose children die with it
POLL_SECONDS = 0.5


def live_stat(pid: int) -> tuple[int, int] | None:
    """(start time in clock ticks since boot, process group) of `pid` from /proc; None if it is
    gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()  # the command name may hold spaces and ")"
    except (FileNotFoundError, ProcessLookupError):
        return None
    state, group, started = fields[0], fields[2], fields[19]  # stat's fields 3, 5 and 22
    return None if state in (b"Z", b"X") else (int(started), int(group))


def start_time(pid: int) -> int | None:
    """When `pid` started (clock ticks since boot, from /proc), or None if it is gone or a zombie."""
    stat = live_stat(pid)
    return stat[0] if stat else None


def owner_token(pid: int | None = None) -> str:
    """The value of `OWNER_ENV` naming `pid` (default: this process)."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}:{start_time(pid)}"


def _owner() -> tuple[int, int | None]:
    token = os.environ.get(OWNER_ENV)
    if token:
        pid, _, started = token.partition(":")
        return int(pid), int(started) if started.isdigit() else None
    parent = os.getppid()
    return parent, start_time(parent)


def _end_self() -> None:
    if os.getpgrp() == os.getpid():
        os.killpg(os.getpid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def when_owner_gone(act: Callable[[], object]) -> None:
    """Watch the owner (named now, from the environment) from a daemon thread; `act()` once it is gone."""
    pid, started = _owner()

    def watch() -> None:
        while started is not None and start_time(pid) == started:
            time.sleep(POLL_SECONDS)
        act()

    threading.Thread(target=watch, name="owner-watch", daemon=True).start()


def die_with_owner() -> None:
    """End this process (and the group it leads) once the owner is gone."""
    when_owner_gone(_end_self)


def _end_rest_of_group() -> None:
    """SIGKILL every process of our group but us."""
    group, me = os.getpgrp(), os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            if os.getpgid(int(entry)) == group:
                os.kill(int(entry), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue


def main(argv: list[str]) -> int:
    """Run `argv` under the watch; its exit status (or the signal that ended it) is ours."""
    if not argv:
        print(f"usage: python -I {__file__} COMMAND ...", file=sys.stderr)
        return 2
    if os.getpgrp() != os.getpid():
        os.setpgid(0, 0)  # a group of our own, so that the watch ends the command's children too
    stops = (signal.SIGTERM, signal.SIGINT)
    for sent in stops:
        # A stop signals the whole group: the command decides how it ends, and we report it. (A
        # handler, unlike SIG_IGN, is not inherited through exec.)
        signal.signal(sent, lambda *_: None)
    child = subprocess.Popen(argv)
    die_with_owner()
    code = child.wait()
    _end_rest_of_group()
    if code < 0:
        for sent in stops:
            signal.signal(sent, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
