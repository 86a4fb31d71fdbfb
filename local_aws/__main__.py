"""python -m local_aws up [--state-dir DIR] [--ports moto=5000,sagemaker=8090,api=8000] [--set NAME=VALUE ...]
python -m local_aws demo [--out demo-output]

`up` runs the whole pipeline on this machine until Ctrl-C (or SIGTERM), then stops
every thread and process and saves moto's state; `up` again finds it all.
`demo` shows the product working end to end (see local_aws/project/demo.py).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from chalice_app.config import ConfigError

from .owner_watch import OWNER_ENV, when_owner_gone
from .project.stack import DEFAULT_PORTS, Stack, StackOptions
from .project.stage import parse_overrides


def parse_ports(text: str) -> dict[str, int]:
    ports = dict(DEFAULT_PORTS)
    for item in filter(None, text.split(",")):
        name, sep, value = item.partition("=")
        if not sep or name not in ports or not value.isdigit():
            raise argparse.ArgumentTypeError(f"--ports takes {','.join(f'{k}=N' for k in DEFAULT_PORTS)} "
                                             f"(0: any free port), not {item!r}")
        ports[name] = int(value)
    return ports


def up_parser(prog: str = "python -m local_aws up") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Run the pipeline on this machine until Ctrl-C.")
    parser.add_argument("--state-dir", type=Path, default=Path(".local-aws"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--ports", type=parse_ports, default=dict(DEFAULT_PORTS),
                        help="moto=N,sagemaker=N,api=N (0: any free port)")
    parser.add_argument("--stage", default="local")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
                        help="replace one of the stage's environment variables")
    parser.add_argument("--schedule-seconds", type=float, default=None,
                        help="run the app's schedule handlers this often instead of their rate")
    parser.add_argument("--concurrency", type=int, default=2, help="batches of one queue handled at once")
    parser.add_argument("--stop-with-owner", action="store_true",
                        help=f"stop (cleanly) once the process named in {OWNER_ENV} is gone, or else the parent")
    return parser


def options_from(args: argparse.Namespace) -> StackOptions:
    return StackOptions(state_dir=args.state_dir, host=args.host, ports=args.ports, stage=args.stage,
                        overrides=parse_overrides(args.overrides), schedule_seconds=args.schedule_seconds,
                        concurrency=args.concurrency)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def up(argv: list[str]) -> int:
    args = up_parser().parse_args(argv)
    try:
        stack = Stack(options_from(args))  # checks the stage's settings before anything starts
    except ConfigError as error:
        print(f"python -m local_aws up: stage {args.stage!r}: {error}", file=sys.stderr, flush=True)
        return 2
    # Ctrl-C stops the stack even when started from a shell that ignores SIGINT in background jobs.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)  # stop as Ctrl-C does
    try:
        # Inside the try: the owner may be gone already, and its SIGTERM must stop the stack cleanly.
        if args.stop_with_owner:  # a launcher killed by a timeout leaves no stack behind
            when_owner_gone(lambda: os.kill(os.getpid(), signal.SIGTERM))
        stack.start()
        print(stack.usage(), flush=True)
        threading.Event().wait()
    except KeyboardInterrupt:
        print("stopping: API, dispatcher, local SageMaker, then moto ...", flush=True)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the stop short
        stack.stop()
    print("stopped", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["up"]:
        return up(argv[1:])
    if argv[:1] == ["demo"]:
        from .project.demo import main as demo

        return demo(argv[1:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
