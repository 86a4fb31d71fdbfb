"""The production server: gunicorn, `gthread` workers, one model per worker process.

The master process never imports torch (forking a process whose OpenMP pool already
ran is unsafe); each worker sets its torch threads, loads the model and only then
accepts connections, so a worker that answers `/ping` is ready. Each worker's request
threads decode in parallel; its single model thread runs the (batched) forward passes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gunicorn.app.base import BaseApplication


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass(frozen=True)
class ServeConfig:
    """How to serve: workers x torch_threads should equal the cores (the default does)."""

    model_dir: Path
    port: int
    host: str = "127.0.0.1"
    workers: int = 1
    torch_threads: int | None = None  # None: cores // workers
    # Batching on by default: with no wait, a lone request runs at once, and under load a worker's
    # queued requests share one forward pass (BENCHMARKS: the only way to the in-process ceiling).
    max_batch_size: int = 8  # 1: no dynamic batching
    max_batch_wait_ms: float = 0.0
    request_threads: int = 16  # connections one worker handles at once (decode runs here)

    def __post_init__(self) -> None:
        if self.workers < 1 or self.max_batch_size < 1 or self.request_threads < 1:
            raise ValueError("workers, max_batch_size and request_threads must be at least 1")
        if self.max_batch_wait_ms < 0:
            raise ValueError("max_batch_wait_ms must not be negative")

    @property
    def threads_per_worker(self) -> int:
        return self.torch_threads or max(1, cpu_count() // self.workers)


class EndpointServer(BaseApplication):
    def __init__(self, config: ServeConfig):
        self.config = config
        super().__init__()

    def load_config(self) -> None:
        c = self.config
        settings = {
            "bind": f"{c.host}:{c.port}",
            "workers": c.workers,
            "worker_class": "gthread",
            "threads": max(c.request_threads, c.max_batch_size),
            "keepalive": 75,  # SageMaker's front end keeps connections open
            "timeout": 600,  # a worker loads the model before its first heartbeat matters
            "graceful_timeout": 3,
            "accesslog": None,
            "errorlog": "-",
            "loglevel": "warning",
            "proc_name": "endpoint-host",
        }
        for key, value in settings.items():
            self.cfg.set(key, value)

    def load(self):
        # Runs in each worker after the fork: threads first, then torch's first use.
        import torch

        torch.set_num_threads(self.config.threads_per_worker)
        torch.set_num_interop_threads(1)
        from local_aws.endpoint_host.app import make_app
        from local_aws.endpoint_host.handler import Handler

        handler = Handler(self.config.model_dir, max_batch_size=self.config.max_batch_size,
                          max_batch_wait_ms=self.config.max_batch_wait_ms)
        return make_app(handler)


def serve(config: ServeConfig) -> None:
    """Run the server in this process until SIGTERM/SIGINT."""
    EndpointServer(config).run()
