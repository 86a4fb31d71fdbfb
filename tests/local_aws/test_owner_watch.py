"""A process of the stack ends itself, and the group it leads, once the stack is gone (even by SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from local_aws import owner_watch
from local_aws.owner_watch import OWNER_ENV, owner_token, start_time

REPO_ROOT = Path(__file__).resolve().parents[2]
WATCHED = """
import subprocess, sys, time
from local_aws.owner_watch import die_with_owner
child = subprocess.Popen(["sleep", "300"])  # in this process's group
die_with_owner()
print(child.pid, flush=True)
time.sleep(300)
"""


def gone(pid: int, timeout: float = 15.0) -> bool:
    """Whether `pid` is gone (or a zombie) within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while start_time(pid) is not None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def owner() -> Iterator[subprocess.Popen]:
    """A stand-in for the stack: the watched processes name it as their owner."""
    process = subprocess.Popen(["sleep", "300"])
    yield process
    process.kill()
    process.wait()


def start(command: list[str], owner: subprocess.Popen) -> subprocess.Popen:
    env = {**os.environ, OWNER_ENV: owner_token(owner.pid), "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
                            start_new_session=True)


def test_start_time_tells_a_live_process_from_a_gone_one(owner):
    assert start_time(os.getpid()) is not None and start_time(owner.pid) is not None
    owner.kill()
    owner.wait()
    assert start_time(owner.pid) is None
    assert owner_token().startswith(f"{os.getpid()}:")


def test_a_watched_process_ends_its_group_when_its_owner_is_killed(owner):
    watched = start([sys.executable, "-c", WATCHED], owner)
    grandchild = int(watched.stdout.readline())
    assert start_time(watched.pid) is not None and start_time(grandchild) is not None
    owner.kill()
    assert watched.wait(15) == -signal.SIGKILL
    assert gone(grandchild)
    watched.stdout.close()


def test_the_wrapper_runs_a_foreign_command_under_the_watch(owner):
    wrapped = start([sys.executable, "-I", owner_watch.__file__, "sh", "-c", "sleep 300 & echo $!; wait"], owner)
    sleeper = int(wrapped.stdout.readline())
    assert os.getpgid(sleeper) == wrapped.pid  # the command's children are in the wrapper's group
    owner.kill()
    assert wrapped.wait(15) == -signal.SIGKILL
    assert gone(sleeper)
    wrapped.stdout.close()


def test_the_wrapper_gives_the_commands_exit_status(owner):
    exits = start([sys.executable, "-I", owner_watch.__file__, sys.executable, "-c", "raise SystemExit(3)"], owner)
    assert exits.wait(15) == 3
    stopped = start([sys.executable, "-I", owner_watch.__file__, "sh", "-c", "echo up; sleep 300"], owner)
    assert stopped.stdout.readline() == "up\n"
    os.killpg(stopped.pid, signal.SIGTERM)  # a stop signals the group: the command ends, the wrapper reports it
    assert stopped.wait(15) == -signal.SIGTERM
    for process in (exits, stopped):
        process.stdout.close()


def test_a_killed_command_takes_what_it_left_in_the_group_with_it(owner):
    # A training toolkit killed while its script runs: the container ends, the script with it.
    wrapped = start([sys.executable, "-I", owner_watch.__file__, "sh", "-c", "sleep 300 & echo $$ $!; wait"], owner)
    shell, sleeper = map(int, wrapped.stdout.readline().split())
    os.kill(shell, signal.SIGKILL)
    assert wrapped.wait(15) == -signal.SIGKILL
    assert gone(sleeper)
    wrapped.stdout.close()


STOPS_CLEANLY = """
import os, signal, threading
from local_aws.owner_watch import when_owner_gone
def interrupt(*_):
    raise KeyboardInterrupt
signal.signal(signal.SIGTERM, interrupt)
try:  # the SIGTERM may come as soon as "up" is read, before this process has run another line
    when_owner_gone(lambda: os.kill(os.getpid(), signal.SIGTERM))  # as `python -m local_aws up --stop-with-owner`
    print("up", flush=True)
    threading.Event().wait()
except KeyboardInterrupt:
    print("stopped cleanly", flush=True)
"""


def test_a_process_can_stop_cleanly_instead_once_its_owner_is_gone(owner):
    # The stack a launcher (a test, a benchmark) started: a launcher killed by a timeout leaves none behind.
    watched = start([sys.executable, "-c", STOPS_CLEANLY], owner)
    assert watched.stdout.readline() == "up\n"
    owner.kill()
    assert watched.wait(15) == 0
    assert watched.stdout.read() == "stopped cleanly\n"
    watched.stdout.close()
