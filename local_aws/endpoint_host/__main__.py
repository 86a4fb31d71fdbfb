"""`python -m local_aws.endpoint_host --model PATH --port N ...` (flags: see the package docstring)."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from local_aws.endpoint_host.extract import UnsafeArchiveError, safe_extract
from local_aws.endpoint_host.server import ServeConfig, serve
from local_aws.owner_watch import die_with_owner


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m local_aws.endpoint_host", description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="model.tar.gz or an unpacked model directory")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--torch-threads", type=int, default=None, help="per worker; default cores / workers")
    parser.add_argument("--max-batch-size", type=int, default=8, help="images per forward pass; 1 = no batching")
    parser.add_argument("--max-batch-wait-ms", type=float, default=0.0)
    parser.add_argument("--request-threads", type=int, default=16)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    die_with_owner()  # in the master, before it forks its workers: it ends its whole group
    scratch: Path | None = None
    owner = os.getpid()  # gunicorn's forked workers unwind through this frame too
    try:
        if args.model.is_dir():
            model_dir = args.model
        else:
            scratch = Path(tempfile.mkdtemp(prefix="endpoint-model-"))
            model_dir = safe_extract(args.model, scratch)
        config = ServeConfig(model_dir=model_dir, port=args.port, host=args.host, workers=args.workers,
                             torch_threads=args.torch_threads, max_batch_size=args.max_batch_size,
                             max_batch_wait_ms=args.max_batch_wait_ms, request_threads=args.request_threads)
        serve(config)
    except (UnsafeArchiveError, FileNotFoundError, ValueError) as error:
        print(f"endpoint host: {error}", file=sys.stderr)
        return 2
    finally:
        if scratch is not None and os.getpid() == owner:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
