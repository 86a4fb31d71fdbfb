"""The training image's framework, imported once: each training process is forked from here.

A SageMaker training container ships its framework (torch, torchvision) installed; a
Python process still pays ~4 s to import them, which is most of a tuning trial's life on
cached features. This process imports them once, then forks one process per job, so a
job starts with the framework already in memory. `framework_image.FrameworkImage` is
the service's side; this module runs as

    python -m local_aws.sagemaker.zygote --fd N --preload torch,torchvision

Protocol, over the SOCK_SEQPACKET socket N (one message per datagram): the service sends
{"argv": [...], "cwd": ..., "env": {...}} with two file descriptors attached (the
job's status socket and the write end of its output pipe). A supervisor forked per job
forks the job itself, sends {"pid": P} on the status socket, waits for the job and sends
{"returncode": R}. The zygote stays single-threaded: forking a threaded process is unsafe.
It exits when the service's end of socket N closes.
"""

from __future__ import annotations

import argparse
import atexit
import builtins
import gc
import importlib
import json
import os
import signal
import socket
import sys
import traceback
import types

from local_aws.owner_watch import die_with_owner

MAX_MESSAGE = 1 << 20
READY = b'{"ready": true}'


def serve(control: socket.socket, base_path: list[str]) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the supervisors
    control.send(READY)
    while True:
        message, fds, _, _ = socket.recv_fds(control, MAX_MESSAGE, 2)
        if not message:
            return  # the service closed its end: it is gone or stopping us
        if os.fork() == 0:
            control.close()
            _supervise(json.loads(message), fds, base_path)
        for fd in fds:
            os.close(fd)


def _supervise(request: dict, fds: list[int], base_path: list[str]) -> None:
    status_fd, output_fd = fds
    status = socket.socket(fileno=status_fd)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # this process waits for its job
    code = 0
    try:
        pid = os.fork()
        if pid == 0:
            status.close()
            _run_job(request, output_fd, base_path)
        os.close(output_fd)
        status.send(json.dumps({"pid": pid}).encode())
        _, wait_status = os.waitpid(pid, 0)
        try:
            os.killpg(pid, signal.SIGKILL)  # what the job left in its group (a container ends with its process)
        except ProcessLookupError:
            pass
        status.send(json.dumps({"returncode": os.waitstatus_to_exitcode(wait_status)}).encode())
    except BaseException:  # noqa: BLE001 - a supervisor must never return into the zygote's loop
        traceback.print_exc()
        code = 1
    os._exit(code)


def _run_job(request: dict, output_fd: int, base_path: list[str]) -> None:
    """Become the job's process: what `Popen(argv, cwd, env, start_new_session=True)` would have started."""
    code = 1
    try:
        os.setsid()  # its own process group, so that a stop reaches its data loader workers too
        # The dispositions a fresh interpreter starts with (Python itself ignores SIGPIPE).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(output_fd, 1)
        os.dup2(output_fd, 2)
        os.close(devnull)
        os.close(output_fd)
        os.chdir(request["cwd"])
        env = request["env"]
        os.environ.clear()
        os.environ.update(env)
        die_with_owner()  # the service, named in its environment: neither the zygote nor a supervisor ends a job
        program = os.path.abspath(request["argv"][1])
        # sys.path as the interpreter builds it for `python program`: the script's folder,
        # then PYTHONPATH, then the installation's paths (none of the zygote's own).
        sys.path[:] = [os.path.dirname(program), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep)),
                       *base_path]
        sys.argv = request["argv"][1:]
        _fresh_process_state(env)
        _run_main(program)
        code = 0
    except SystemExit as error:
        code = _exit_code(error.code)
    except BaseException as error:  # noqa: BLE001 - printed as the interpreter would, then the job fails
        frames = error.__traceback__
        while frames is not None and frames.tb_frame.f_code.co_filename == __file__:
            frames = frames.tb_next  # the job's traceback starts in its script, not in the zygote
        traceback.print_exception(type(error), error, frames)
    finally:
        try:
            atexit._run_exitfuncs()  # what a normal interpreter exit runs (os._exit does not)
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _run_main(program: str) -> None:
    """Run the program as the interpreter runs a script: as the module __main__ (runpy would rewrite argv[0])."""
    main = types.ModuleType("__main__")
    main.__dict__.update(__file__=program, __builtins__=builtins, __cached__=None, __loader__=None,
                         __package__=None, __spec__=None)
    sys.modules["__main__"] = main
    with open(program, "rb") as source:
        code = compile(source.read(), program, "exec")
    exec(code, main.__dict__)


def _fresh_process_state(env: dict[str, str]) -> None:
    """What a new process would have had, that an imported framework fixed in the zygote."""
    for name in [m for m in sys.modules if m == "local_aws" or m.startswith("local_aws.")]:
        del sys.modules[name]  # the zygote's own package: not the job's to import
    if "numpy" in sys.modules:  # its global generator was seeded once, at import: every fork would share it
        sys.modules["numpy"].random.seed()
    threads = env.get("OMP_NUM_THREADS", "")
    if "torch" in sys.modules and threads.isdigit() and int(threads) > 0:
        # OpenMP read OMP_NUM_THREADS when torch loaded it, in the zygote's environment.
        sys.modules["torch"].set_num_threads(int(threads))


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def main() -> None:
    parser = argparse.ArgumentParser(description="Fork training processes from a preloaded framework")
    parser.add_argument("--fd", type=int, required=True, help="the service's SOCK_SEQPACKET socket")
    parser.add_argument("--preload", default="torch,torchvision", help="modules to import once, comma-separated")
    args = parser.parse_args()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the service stops the zygote, not a terminal's Ctrl-C
    # The installation's paths: what a job's sys.path keeps besides its own script folder and PYTHONPATH.
    own = {os.path.abspath(p) for p in [os.getcwd(), *os.environ.get("PYTHONPATH", "").split(os.pathsep)] if p}
    base_path = [p for p in sys.path[1:] if p and os.path.abspath(p) not in own]
    control = socket.socket(fileno=args.fd)
    for module in filter(None, args.preload.split(",")):
        importlib.import_module(module.strip())
    gc.collect()
    gc.freeze()  # what is imported stays shared between the forks instead of being copied by the collector
    serve(control, base_path)


if __name__ == "__main__":
    main()
