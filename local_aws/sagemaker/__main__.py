"""python -m local_aws.sagemaker --port 8090 --state-dir DIR [--event-bus NAME] [--max-running-jobs N]
python -m local_aws.sagemaker logs JOB_NAME --state-dir DIR"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from .config import Settings


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["logs"]:
        parser = argparse.ArgumentParser(prog="python -m local_aws.sagemaker logs")
        parser.add_argument("job_name")
        parser.add_argument("--state-dir", type=Path, default=Path(".local-sagemaker"))
        args = parser.parse_args(argv[1:])
        path = args.state_dir / "logs" / f"{args.job_name}.log"
        if not path.exists():
            print(f"no log for training job {args.job_name} under {args.state_dir}", file=sys.stderr)
            return 1
        sys.stdout.write(path.read_text(errors="replace"))
        return 0
    parser = argparse.ArgumentParser(prog="python -m local_aws.sagemaker", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--state-dir", type=Path, default=Path(".local-sagemaker"))
    parser.add_argument("--event-bus", default=None, help="EventBridge bus for state change events (default: default)")
    parser.add_argument("--max-running-jobs", type=int, default=None)
    args = parser.parse_args(argv)
    from .server import LocalSageMaker

    settings = Settings.from_env(args.state_dir, event_bus=args.event_bus, max_running_jobs=args.max_running_jobs)
    service = LocalSageMaker(settings, host=args.host, port=args.port)
    signal.signal(signal.SIGTERM, _interrupt)  # stop like Ctrl-C: jobs stopped, hosts shut down
    print(f"local SageMaker listening on {service.url} (state in {settings.state_dir})", flush=True)
    try:
        service.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        service.backend.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
