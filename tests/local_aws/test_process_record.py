"""A stack starting after one that died ends what that one recorded, and nothing else."""

from __future__ import annotations

import json
import subprocess

from local_aws.owner_watch import start_time
from local_aws.process_record import RECORD_ENV, end_recorded, read_record, record


def test_the_next_start_ends_what_is_recorded_but_never_a_reused_pid(tmp_path, monkeypatch):
    path = tmp_path / "processes.jsonl"
    monkeypatch.setenv(RECORD_ENV, str(path))
    # A group, as a host leads; its line comes once the shell has forked its child.
    left = subprocess.Popen(["sh", "-c", "sleep 300 & echo forked; wait"], start_new_session=True,
                            stdout=subprocess.PIPE, text=True)
    assert left.stdout is not None and left.stdout.readline() == "forked\n"
    other = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        record(left.pid, "left behind")
        started = start_time(other.pid)
        assert started is not None
        with path.open("a") as file:  # `other` has the pid of something recorded, but not its start time
            file.write(json.dumps({"pid": other.pid, "start_time": started - 1, "command": "reused pid"}) + "\n")
            file.write('{"pid": 12')  # cut short by the death of the stack
        assert [entry.command for entry in read_record(path)] == ["left behind", "reused pid"]
        children = subprocess.run(["pgrep", "-g", str(left.pid)], capture_output=True, text=True).stdout.split()
        assert len(children) == 2  # sh and its sleep

        ended = end_recorded(path)

        assert [(entry.pid, entry.command) for entry in ended] == [(left.pid, "left behind")]
        assert left.wait(10) < 0
        for pid in map(int, children):
            assert start_time(pid) is None
        assert other.poll() is None and not path.exists()
        assert end_recorded(path) == []  # nothing recorded: nothing to end
    finally:
        for process in (left, other):
            process.kill()
            process.wait()


def test_nothing_is_recorded_without_a_record_file_or_for_a_process_already_gone(tmp_path, monkeypatch):
    monkeypatch.delenv(RECORD_ENV, raising=False)
    record(1, "init")  # no file named: nothing written, nothing raised
    path = tmp_path / "processes.jsonl"
    monkeypatch.setenv(RECORD_ENV, str(path))
    done = subprocess.Popen(["true"])
    done.wait()
    record(done.pid, "gone")
    assert read_record(path) == []
