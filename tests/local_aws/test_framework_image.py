"""A training job's process forked from the warm framework image behaves like a fresh
`python program` started with the job's argv, cwd and environment."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from local_aws.owner_watch import OWNER_ENV, owner_token
from local_aws.sagemaker.framework_image import (
    REPO_ROOT,
    ForkedProcess,
    FrameworkImage,
    start_process,
    time_limit,
)

PROBE = textwrap.dedent("""
    import json, os, signal, sys
    import helper  # from the job's PYTHONPATH
    print(json.dumps({
        "argv": sys.argv, "cwd": os.getcwd(), "marker": os.environ.get("JOB_MARKER"),
        "zygote_only": os.environ.get("ONLY_IN_ZYGOTE"), "helper": helper.VALUE,
        "repo_on_path": any(os.path.abspath(p) == REPO for p in sys.path),
        "preloaded": sorted(m for m in ("numpy", "torch") if m in sys.modules),
        "numpy_draw": __import__("numpy").random.randint(1 << 30),
        "threads": __import__("torch").get_num_threads() if "torch" in sys.modules else None,
        "main": __name__, "pid": os.getpid(), "pgid": os.getpgid(0),
        "fresh": {"signals": [str(signal.getsignal(s)) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE,
                                                                 signal.SIGCHLD)],
                  "local_aws_loaded": "local_aws" in sys.modules, "stdin": sys.stdin.read(),
                  "buffered": sys.stdout.line_buffering},
    }), flush=True)
    print("to stderr", file=sys.stderr, flush=True)
    sys.exit(int(os.environ.get("EXIT_WITH", "0")))
""")


@pytest.fixture
def job_dir(tmp_path: Path) -> Path:
    (tmp_path / "code").mkdir()
    (tmp_path / "lib").mkdir()
    (tmp_path / "code" / "probe.py").write_text(f"REPO = {str(REPO_ROOT)!r}\n" + PROBE)
    (tmp_path / "lib" / "helper.py").write_text("VALUE = 42\n")
    return tmp_path


@pytest.fixture(scope="module")
def image() -> Iterator[FrameworkImage]:
    image = FrameworkImage(("numpy",), env={**os.environ, "ONLY_IN_ZYGOTE": "yes"})
    yield image
    image.stop()


def job_env(job_dir: Path, **extra: str) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(job_dir / "lib"), "JOB_MARKER": "job-1", **extra}


def run(process) -> tuple[list[str], int]:
    lines = [line.rstrip("\n") for line in process.stdout]
    process.stdout.close()
    return lines, process.wait(30)


def test_a_forked_job_sees_its_own_argv_cwd_environment_and_path(image, job_dir):
    process = image.spawn([sys.executable, "probe.py", "--lr", "0.1"], job_dir / "code", job_env(job_dir))
    lines, code = run(process)
    seen = json.loads(lines[0])
    assert code == 0 and lines[1] == "to stderr"
    assert seen["argv"] == ["probe.py", "--lr", "0.1"]
    assert seen["cwd"] == str(job_dir / "code")
    assert (seen["marker"], seen["zygote_only"], seen["helper"]) == ("job-1", None, 42)
    assert seen["repo_on_path"] is False  # the zygote's own folder is not the job's
    assert seen["preloaded"] == ["numpy"] and seen["main"] == "__main__"
    assert seen["pid"] == process.pid and seen["pgid"] == process.pid  # a session of its own


def test_what_a_process_starts_with_is_the_same_forked_or_fresh(image, job_dir):
    """Signal dispositions, stdin, the zygote's own modules: as a fresh `python probe.py` has them."""
    env = job_env(job_dir, PYTHONUNBUFFERED="1")
    # Whatever the service's own process ignores (the stack ignores a terminal's Ctrl-C) is not the job's.
    ignoring = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        forked = json.loads(run(image.spawn([sys.executable, "probe.py"], job_dir / "code", env))[0][0])
        fresh = json.loads(run(start_process([sys.executable, "probe.py"], job_dir / "code", env, None))[0][0])
    finally:
        signal.signal(signal.SIGINT, ignoring)
    assert forked["fresh"] == fresh["fresh"]
    assert fresh["fresh"]["signals"][0] == str(signal.default_int_handler) and fresh["fresh"]["stdin"] == ""


def test_exit_codes_and_uncaught_errors_come_back_as_a_process_gives_them(image, job_dir):
    _, code = run(image.spawn([sys.executable, "probe.py"], job_dir / "code", job_env(job_dir, EXIT_WITH="3")))
    assert code == 3
    (job_dir / "code" / "broken.py").write_text("raise ValueError('bad hyperparameter')\n")
    lines, code = run(image.spawn([sys.executable, "broken.py"], job_dir / "code", job_env(job_dir)))
    assert code == 1 and lines[-1] == "ValueError: bad hyperparameter"
    assert lines[:2] == ["Traceback (most recent call last):", f'  File "{job_dir / "code" / "broken.py"}", line 1, in <module>']


def test_each_fork_draws_its_own_random_numbers(image, job_dir):
    draws = {json.loads(run(image.spawn([sys.executable, "probe.py"], job_dir / "code", job_env(job_dir)))[0][0])
             ["numpy_draw"] for _ in range(3)}
    assert len(draws) == 3


def test_a_stop_reaches_the_job_and_its_children(image, job_dir):
    (job_dir / "code" / "sleeper.py").write_text(textwrap.dedent("""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print(child.pid, flush=True)
        time.sleep(60)
    """))
    process = image.spawn([sys.executable, "sleeper.py"], job_dir / "code", job_env(job_dir))
    child = int(process.stdout.readline())
    assert process.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        process.wait(0.1)
    os.killpg(process.pid, signal.SIGTERM)
    assert process.wait(10) == -signal.SIGTERM
    assert _ends(child)
    process.stdout.close()


@pytest.fixture(scope="module")
def torch_image() -> Iterator[FrameworkImage]:
    image = FrameworkImage(("torch",), env={**os.environ, "OMP_NUM_THREADS": "1"})
    yield image
    image.stop()


@pytest.mark.parametrize("threads", ["1", "3"])  # fewer or more than the image's own
def test_torch_preloaded_takes_the_jobs_thread_count(torch_image, job_dir, threads):
    lines, code = run(torch_image.spawn([sys.executable, "probe.py"], job_dir / "code",
                                        job_env(job_dir, OMP_NUM_THREADS=threads)))
    seen = json.loads(lines[0])
    assert code == 0 and "torch" in seen["preloaded"] and seen["threads"] == int(threads)


def test_an_image_that_cannot_start_leaves_jobs_to_fresh_processes(job_dir):
    image = FrameworkImage(("no_such_framework_module",), start_timeout=60)
    try:
        process = start_process([sys.executable, "probe.py"], job_dir / "code", job_env(job_dir), image)
        lines, code = run(process)
    finally:
        image.stop()
    assert not isinstance(process, ForkedProcess)
    assert code == 0 and json.loads(lines[0])["preloaded"] == []


def test_a_killed_image_is_started_again_for_the_next_job(job_dir):
    image = FrameworkImage(("json",))
    try:
        first, _ = run(image.spawn([sys.executable, "probe.py"], job_dir / "code", job_env(job_dir)))
        assert image._process is not None
        image._process.kill()
        image._process.wait()
        process = start_process([sys.executable, "probe.py"], job_dir / "code", job_env(job_dir), image)
        lines, code = run(process)
    finally:
        image.stop()
    assert isinstance(process, ForkedProcess) and code == 0 and json.loads(lines[0])["marker"] == "job-1"


def _ends(pid: int, within: float = 10.0) -> bool:
    """Whether `pid` is gone within `within` seconds (a bound on waiting, not a timing check)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    return not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0): reaped by its (dead) parent's reaper soon.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split()[2] != "Z"


@pytest.mark.parametrize("forked", [True, False], ids=["forked", "fresh"])
def test_a_job_ends_with_its_group_when_the_service_dies(image, job_dir, forked):
    (job_dir / "code" / "sleeper.py").write_text(textwrap.dedent("""
        import subprocess, time
        child = subprocess.Popen(["sleep", "300"])
        print(child.pid, flush=True)
        time.sleep(300)
    """))
    service = subprocess.Popen(["sleep", "300"])  # stands in for the service, named as the jobs' owner
    env = job_env(job_dir, **{OWNER_ENV: owner_token(service.pid)})
    process = start_process([sys.executable, "sleeper.py"], job_dir / "code", env, image if forked else None)
    child = int(process.stdout.readline())
    service.kill()
    service.wait()
    assert process.wait(15) == -signal.SIGKILL
    assert _ends(child)
    process.stdout.close()


def test_a_time_limit_stops_the_job_and_says_so(image, job_dir):
    (job_dir / "code" / "forever.py").write_text("import time\ntime.sleep(60)\n")
    process = image.spawn([sys.executable, "forever.py"], job_dir / "code", job_env(job_dir))
    with time_limit(process, 0.5) as expired:
        _, code = run(process)
    assert expired.is_set() and code == -signal.SIGTERM
    quick = image.spawn([sys.executable, "probe.py"], job_dir / "code", job_env(job_dir))
    with time_limit(quick, 30) as expired:
        _, code = run(quick)
    assert not expired.is_set() and code == 0
