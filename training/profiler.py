"""The training job's own profiler: system metrics, per-step time split, a short trace.

    prof = Profiler(out_dir)
    prof.start()                                    # sampler thread -> system_metrics.jsonl
    for epoch in ...:
        for batch in prof.iterate(loader, phase="train"):   # times the wait for each batch
            with prof.compute(batch_size):                   # times the work on it
                ...
    summary = prof.stop()   # -> step_times.jsonl, trace.json, profile_summary.json

It is always on, so it stays cheap: a step costs a few clock reads and one list
append (files are written at `stop`), the sampler is a daemon thread waking every
`interval_s`, and torch.profiler runs only for the `trace_steps` window. A step's
wall time runs from one fetch to the next and splits into

    data_wait  waiting for the loader to hand over the batch
    compute    inside `compute(...)` (synchronised with the GPU when CUDA is in use)
    other      the rest: bookkeeping between steps (metrics, logging, hooks)

so the three sum to the loop's wall time (less the one-off start of the trace, which
belongs to no step). Works without a GPU, psutil,
pynvml or nvidia-smi: what cannot be measured is recorded as missing, never guessed.
Time is read, and the sampler waits, through a `Clock`: a test's clock moves on command.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import resource
import shutil
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch

try:  # psutil is in requirements-dev and in SageMaker's PyTorch images; optional all the same
    import psutil
except ImportError:  # pragma: no cover - exercised only where psutil is missing
    psutil = None

logger = logging.getLogger(__name__)

SYSTEM_METRICS = "system_metrics.jsonl"
STEP_TIMES = "step_times.jsonl"
TRACE = "trace.json"
SUMMARY = "profile_summary.json"
TRAIN = "train"

T = TypeVar("T")
_MB = 1024 * 1024


# --------------------------------------------------------------------------- clock


class Clock(Protocol):
    """Where the profiler reads the time and its sampler waits for the next tick."""

    def now(self) -> float:
        """Seconds, from any fixed origin."""

    def wait(self, condition: threading.Condition, timeout: float) -> None:
        """With `condition` held: wait until it is notified or `timeout` seconds have passed."""


class PerfCounterClock:
    def now(self) -> float:
        return time.perf_counter()

    def wait(self, condition: threading.Condition, timeout: float) -> None:
        condition.wait(timeout)


# --------------------------------------------------------------------------- GPU readers


class _NvmlReader:
    """GPU utilisation and memory through NVML (the nvidia-ml-py package)."""

    def __init__(self, pynvml: Any) -> None:
        self._nvml = pynvml
        pynvml.nvmlInit()
        self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        if not self._handles:
            raise RuntimeError("NVML sees no GPU")
        names = [pynvml.nvmlDeviceGetName(h) for h in self._handles]
        self.names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]

    def read(self) -> list[dict[str, float]]:
        out = []
        for handle in self._handles:
            memory = self._nvml.nvmlDeviceGetMemoryInfo(handle)
            out.append(
                {
                    "util": float(self._nvml.nvmlDeviceGetUtilizationRates(handle).gpu),
                    "mem_used_mb": memory.used / _MB,
                    "mem_total_mb": memory.total / _MB,
                }
            )
        return out


_SMI_QUERY = "--query-gpu=name,utilization.gpu,memory.used,memory.total"


def parse_nvidia_smi(text: str) -> list[tuple[str, dict[str, float]]]:
    """Rows of `nvidia-smi --query-gpu=name,utilization.gpu,memory.used,memory.total
    --format=csv,noheader,nounits`: (name, {"util", "mem_used_mb", "mem_total_mb"}) per GPU.
    Unreadable fields ("[N/A]") become NaN rather than failing the sampler."""

    def number(field: str) -> float:
        try:
            return float(field)
        except ValueError:
            return math.nan

    rows = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.rsplit(",", 3)]
        if len(parts) != 4:
            continue
        name, util, used, total = parts
        rows.append((name, {"util": number(util), "mem_used_mb": number(used), "mem_total_mb": number(total)}))
    return rows


class _NvidiaSmiReader:
    """The same figures from the nvidia-smi command, where NVML's Python binding is absent."""

    def __init__(self, executable: str) -> None:
        self._command = [executable, _SMI_QUERY, "--format=csv,noheader,nounits"]
        rows = parse_nvidia_smi(self._run())
        if not rows:
            raise RuntimeError("nvidia-smi lists no GPU")
        self.names = [name for name, _ in rows]

    def _run(self) -> str:
        return subprocess.run(self._command, capture_output=True, text=True, timeout=5, check=True).stdout

    def read(self) -> list[dict[str, float]]:
        return [figures for _, figures in parse_nvidia_smi(self._run())]


def open_gpu_reader() -> _NvmlReader | _NvidiaSmiReader | None:
    """The first GPU source that answers: NVML, then nvidia-smi; None on a machine without GPU."""
    try:
        import pynvml

        return _NvmlReader(pynvml)
    except Exception as error:  # ImportError, or NVML present without a driver
        logger.debug("NVML unavailable: %s", error)
    executable = shutil.which("nvidia-smi")
    if executable:
        try:
            return _NvidiaSmiReader(executable)
        except Exception as error:
            logger.warning("nvidia-smi present but unreadable, GPU metrics off: %s", error)
    return None


# --------------------------------------------------------------------------- system sampler


class _SystemSampler(threading.Thread):
    """Samples CPU, memory and GPU every `interval_s` and appends one JSON line per sample.

    One line every half second costs nothing next to a training step, and a job that dies
    (out of memory, say) still leaves its metrics behind."""

    def __init__(self, path: Path, interval_s: float, gpu: _NvmlReader | _NvidiaSmiReader | None,
                 clock: Clock) -> None:
        super().__init__(name="system-metrics-sampler", daemon=True)
        self._path = path
        self._interval_s = interval_s
        self._gpu = gpu
        self._clock = clock
        self._stopping = threading.Condition()
        self._stopped = False
        self._process = psutil.Process() if psutil else None
        self._t0 = clock.now()
        self.samples: list[dict[str, Any]] = []

    def run(self) -> None:
        if psutil:  # cpu_percent measures since its previous call in the same thread: prime it here
            psutil.cpu_percent(percpu=True)
            self._process.cpu_percent()
        with self._path.open("a", encoding="utf-8") as sink:
            ticks = 1
            # Wake on a fixed grid so the time spent sampling does not stretch the interval.
            while self._sleep_until(self._t0 + ticks * self._interval_s):
                self._record(sink)
                ticks = max(ticks + 1, math.ceil((self._clock.now() - self._t0) / self._interval_s))
            self._record(sink)  # the tail since the last tick, so short runs still get a sample

    def _sleep_until(self, tick: float) -> bool:
        """False once stopped; True when the tick has come."""
        with self._stopping:
            while not self._stopped and (remaining := tick - self._clock.now()) > 0:
                self._clock.wait(self._stopping, remaining)
            return not self._stopped

    def stop(self) -> None:
        with self._stopping:
            self._stopped = True
            self._stopping.notify()
        self.join(timeout=10)

    def _record(self, sink: Any) -> None:
        try:
            sample = self.sample()
        except Exception as error:  # a failing probe must never take the training job down
            logger.warning("system sample failed: %s", error)
            return
        self.samples.append(sample)
        sink.write(json.dumps(sample) + "\n")
        sink.flush()

    def sample(self) -> dict[str, Any]:
        sample: dict[str, Any] = {"t": round(self._clock.now() - self._t0, 3), "time": time.time()}
        if psutil:
            per_core = psutil.cpu_percent(percpu=True)
            memory = psutil.virtual_memory()
            children = self._process.children(recursive=True)
            sample.update(
                cpu_percent=round(sum(per_core) / max(1, len(per_core)), 1),
                cpu_per_core=per_core,
                process_cpu_percent=self._process.cpu_percent(),
                rss_mb=round(self._process.memory_info().rss / _MB, 1),
                children_rss_mb=round(sum(_rss(child) for child in children) / _MB, 1),
                children=len(children),
                memory_used_percent=memory.percent,
                memory_total_mb=round(memory.total / _MB, 1),
            )
        else:
            sample["rss_mb"] = round(_max_rss_bytes() / _MB, 1)
        if self._gpu is not None:
            gpus = self._gpu.read()
            sample["gpu_util"] = [g["util"] for g in gpus]
            sample["gpu_mem_used_mb"] = [g["mem_used_mb"] for g in gpus]
            sample["gpu_mem_total_mb"] = [g["mem_total_mb"] for g in gpus]
        return sample


def _rss(process: Any) -> int:
    try:
        return process.memory_info().rss
    except Exception:  # a DataLoader worker may exit between listing and reading
        return 0


def _max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


# --------------------------------------------------------------------------- summary


@dataclass(frozen=True)
class ProfileSummary:
    """The figures the report and its findings are built from.

    Step figures cover the training steps after the first one (it pays for lazy
    initialisation: imports, allocator, kernel selection) and outside the torch.profiler
    window (tracing slows the steps it watches); every phase is counted in `phase_steps`."""

    steps: int  # training steps summarised
    phase_steps: dict[str, int]
    wall_s: float  # start() to stop()
    mean_batch_size: float
    mean_step_ms: float
    mean_data_wait_ms: float
    mean_compute_ms: float
    mean_other_ms: float
    data_wait_fraction: float
    compute_fraction: float
    other_fraction: float
    images_per_s: float
    samples: int  # system samples taken
    cpu_count: int
    cpu_util_mean: float | None  # percent of all cores, 0-100
    cpu_util_max: float | None
    peak_rss_mb: float
    peak_children_rss_mb: float | None
    memory_used_peak_percent: float | None
    gpu_names: list[str]
    gpu_util_mean: float | None  # percent, mean over samples and GPUs
    gpu_util_max: float | None
    gpu_memory_peak_mb: float | None
    gpu_memory_total_mb: float | None
    cuda_used: bool
    system_metrics_path: str | None = None
    step_times_path: str | None = None
    trace_path: str | None = None

    @property
    def gpu_present(self) -> bool:
        return bool(self.gpu_names)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ProfileSummary":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def line(self) -> str:
        """One log line, `key=value` like the metric lines."""
        gpu = "n/a" if self.gpu_util_mean is None else f"{self.gpu_util_mean:.0f}"
        cpu = "n/a" if self.cpu_util_mean is None else f"{self.cpu_util_mean:.0f}"
        return (
            f"profile steps={self.steps} step_ms={self.mean_step_ms:.1f} "
            f"data_wait_ms={self.mean_data_wait_ms:.1f} compute_ms={self.mean_compute_ms:.1f} "
            f"data_wait_fraction={self.data_wait_fraction:.3f} images_per_s={self.images_per_s:.1f} "
            f"cpu_util={cpu} gpu_util={gpu} peak_rss_mb={self.peak_rss_mb:.0f}"
        )


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else None


def _max(values: list[float]) -> float | None:
    values = [v for v in values if not math.isnan(v)]
    return max(values) if values else None


def summarize(
    steps: list[dict[str, Any]],
    samples: list[dict[str, Any]],
    *,
    wall_s: float,
    gpu_names: list[str],
    cuda_used: bool = False,
) -> ProfileSummary:
    """Fold step records and system samples into a ProfileSummary (pure)."""
    phase_steps: dict[str, int] = {}
    for step in steps:
        phase_steps[step["phase"]] = phase_steps.get(step["phase"], 0) + 1
    chosen = [s for s in steps if s["phase"] == TRAIN] or steps
    # Warm-up and traced steps are slower than the rest; keep them only if nothing else is left.
    chosen = [s for s in chosen if not s["traced"] and not s.get("warmup")] or chosen
    n = len(chosen)
    wait = sum(s["data_wait_s"] for s in chosen)
    compute = sum(s["compute_s"] for s in chosen)
    other = sum(s["other_s"] for s in chosen)
    total = wait + compute + other
    images = sum(s["batch_size"] or 0 for s in chosen)

    def per_step_ms(seconds: float) -> float:
        return 1000 * seconds / n if n else 0.0

    def fraction(seconds: float) -> float:
        return seconds / total if total > 0 else 0.0

    cpu = [s["cpu_percent"] for s in samples if "cpu_percent" in s]
    gpu_util = [_mean(s["gpu_util"]) for s in samples if s.get("gpu_util")]
    gpu_mem = [sum(s["gpu_mem_used_mb"]) for s in samples if s.get("gpu_mem_used_mb")]
    gpu_total = [sum(s["gpu_mem_total_mb"]) for s in samples if s.get("gpu_mem_total_mb")]
    memory = [s["memory_used_percent"] for s in samples if "memory_used_percent" in s]
    children_rss = [s["children_rss_mb"] for s in samples if "children_rss_mb" in s]
    rss = [s["rss_mb"] for s in samples if "rss_mb" in s]
    return ProfileSummary(
        steps=n,
        phase_steps=phase_steps,
        wall_s=round(wall_s, 3),
        mean_batch_size=images / n if n else 0.0,
        mean_step_ms=per_step_ms(total),
        mean_data_wait_ms=per_step_ms(wait),
        mean_compute_ms=per_step_ms(compute),
        mean_other_ms=per_step_ms(other),
        data_wait_fraction=fraction(wait),
        compute_fraction=fraction(compute),
        other_fraction=fraction(other),
        images_per_s=images / total if total > 0 else 0.0,
        samples=len(samples),
        cpu_count=os.cpu_count() or 1,
        cpu_util_mean=_mean(cpu),
        cpu_util_max=_max(cpu),
        peak_rss_mb=max([_max_rss_bytes() / _MB, *rss]),
        peak_children_rss_mb=_max(children_rss),
        memory_used_peak_percent=_max(memory),
        gpu_names=list(gpu_names),
        gpu_util_mean=_mean([u for u in gpu_util if u is not None]),
        gpu_util_max=_max([u for u in gpu_util if u is not None]),
        gpu_memory_peak_mb=_max(gpu_mem),
        gpu_memory_total_mb=_max(gpu_total),
        cuda_used=cuda_used,
    )


# --------------------------------------------------------------------------- profiler


def _batch_size(batch: Any) -> int | None:
    """The leading dimension of the first tensor in a batch ((images, labels), dict, tensor)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else None
    if isinstance(batch, dict):
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)):
        for item in batch:
            size = _batch_size(item)
            if size is not None:
                return size
    return None


def _cuda_in_use() -> bool:
    # is_initialized: never create a CUDA context just to measure (and never on a CPU-only box).
    return torch.cuda.is_available() and torch.cuda.is_initialized()


class Profiler:
    """System metrics, per-step data-wait/compute split and a short torch.profiler trace.

    `trace_steps=(first, stop)` traces training steps first..stop-1, counted over the whole
    run from 0 (the first steps warm up caches and workers; tiny epochs still get a trace)."""

    def __init__(self, out_dir: Path, interval_s: float = 0.5, trace_steps: tuple[int, int] | None = (3, 6),
                 clock: Clock | None = None) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, not {interval_s}")
        if trace_steps is not None and not 0 <= trace_steps[0] < trace_steps[1]:
            raise ValueError(f"trace_steps must be (first, stop) with 0 <= first < stop, not {trace_steps}")
        self.out_dir = Path(out_dir)
        self.interval_s = interval_s
        self.trace_steps = trace_steps
        self._clock = clock or PerfCounterClock()
        self.steps: list[dict[str, Any]] = []
        self._epochs: dict[str, int] = {}
        self._train_step = 0  # global index of the next training step
        self._sampler: _SystemSampler | None = None
        self._gpu_names: list[str] = []
        self._t_start: float | None = None
        self._summary: ProfileSummary | None = None
        self._trace: torch.profiler.profile | None = None  # kept from start until exported
        self._tracing = False
        self._traced = False  # the one trace window is over (or could not start)
        self._open: dict[str, Any] | None = None  # the step between its fetch and the next fetch

    # -- lifecycle

    def start(self) -> "Profiler":
        if self._t_start is not None:
            raise RuntimeError("the profiler was already started")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / SYSTEM_METRICS).unlink(missing_ok=True)
        gpu = open_gpu_reader()
        self._gpu_names = list(gpu.names) if gpu else []
        self._sampler = _SystemSampler(self.out_dir / SYSTEM_METRICS, self.interval_s, gpu, self._clock)
        self._t_start = self._clock.now()
        self._sampler.start()
        return self

    def stop(self) -> ProfileSummary:
        """Stop sampling, write step_times.jsonl, trace.json and profile_summary.json."""
        if self._summary is not None:
            return self._summary
        if self._t_start is None:
            raise RuntimeError("the profiler was never started")
        wall_s = self._clock.now() - self._t_start
        self._end_trace()
        self._sampler.stop()
        step_path = self.out_dir / STEP_TIMES
        step_path.write_text("".join(json.dumps(step) + "\n" for step in self.steps), encoding="utf-8")
        trace_path = self._export_trace()
        summary = summarize(
            self.steps, self._sampler.samples, wall_s=wall_s, gpu_names=self._gpu_names, cuda_used=_cuda_in_use()
        )
        if summary.cuda_used and summary.gpu_memory_peak_mb is None:
            summary = replace(summary, gpu_memory_peak_mb=torch.cuda.max_memory_reserved() / _MB)
        self._summary = replace(
            summary,
            system_metrics_path=str(self.out_dir / SYSTEM_METRICS),
            step_times_path=str(step_path),
            trace_path=str(trace_path) if trace_path else None,
        )
        (self.out_dir / SUMMARY).write_text(json.dumps(self._summary.to_dict(), indent=2), encoding="utf-8")
        return self._summary

    def __enter__(self) -> "Profiler":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- steps

    def iterate(self, loader: Iterable[T], phase: str = TRAIN) -> Iterator[T]:
        """Yield the loader's batches, timing how long each one kept the loop waiting."""
        epoch = self._epochs[phase] = self._epochs.get(phase, 0) + 1
        iterator = iter(loader)
        index = 0
        try:
            while True:
                self._close_step()
                if phase == TRAIN:
                    self._toggle_trace()
                t_fetch = self._clock.now()
                with self._label("data_wait"):
                    try:
                        batch = next(iterator)
                    except StopIteration:
                        return
                t_ready = self._clock.now()
                self._open = {
                    "phase": phase,
                    "epoch": epoch,
                    "step": index,
                    "t": round(t_fetch - (self._t_start or t_fetch), 6),
                    "data_wait_s": t_ready - t_fetch,
                    "compute_s": 0.0,
                    "batch_size": _batch_size(batch),
                    "traced": self._tracing,
                    "warmup": phase == TRAIN and self._train_step == 0,
                    "_t_fetch": t_fetch,
                }
                if phase == TRAIN:
                    self._train_step += 1
                index += 1
                yield batch
        finally:
            self._close_step()
            if phase == TRAIN:  # a window longer than the run's first epochs ends with the epoch
                self._end_trace()

    @contextlib.contextmanager
    def compute(self, batch_size: int | None = None) -> Iterator[None]:
        """Time the work on the current batch; on CUDA, wait for the GPU so the time is real."""
        if self._open is None:  # used without iterate(): a step with no data wait
            now = self._clock.now()
            self._open = {
                "phase": TRAIN, "epoch": self._epochs.get(TRAIN, 0), "step": None,
                "t": round(now - (self._t_start or now), 6), "data_wait_s": 0.0, "compute_s": 0.0,
                "batch_size": None, "traced": self._tracing, "_t_fetch": now, "_standalone": True,
            }  # fmt: skip
        step = self._open
        cuda = _cuda_in_use()
        if cuda:
            torch.cuda.synchronize()
        t0 = self._clock.now()
        with self._label("compute"):
            yield
            if cuda:
                torch.cuda.synchronize()
        step["compute_s"] += self._clock.now() - t0
        if batch_size is not None:
            step["batch_size"] = int(batch_size)
        if step.pop("_standalone", False):
            self._close_step()

    def _close_step(self) -> None:
        step, self._open = self._open, None
        if step is None:
            return
        wall = self._clock.now() - step.pop("_t_fetch")
        step["other_s"] = max(0.0, wall - step["data_wait_s"] - step["compute_s"])
        self.steps.append(step)

    # -- torch.profiler window

    def _toggle_trace(self) -> None:
        if self.trace_steps is None or self._traced:
            return
        first, stop = self.trace_steps
        if not self._tracing and first <= self._train_step < stop:
            self._start_trace()
        elif self._tracing and self._train_step >= stop:
            self._end_trace()

    def _start_trace(self) -> None:
        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        else:  # kineto logs a spurious "gpuGetDeviceCount failed" ERROR line on a CPU-only machine
            os.environ.setdefault("KINETO_LOG_LEVEL", "5")
        try:
            self._trace = torch.profiler.profile(activities=activities)
            self._trace.start()
            self._tracing = True
        except Exception as error:  # a profiler that cannot start costs the trace, not the job
            logger.warning("torch.profiler unavailable, no trace: %s", error)
            self._trace, self._traced = None, True

    def _end_trace(self) -> None:
        if not self._tracing:
            return
        self._tracing, self._traced = False, True
        try:
            self._trace.stop()
        except Exception as error:
            logger.warning("torch.profiler failed to stop: %s", error)
            self._trace = None

    def _export_trace(self) -> Path | None:
        path = self.out_dir / TRACE
        path.unlink(missing_ok=True)
        if self._trace is None:
            return None
        try:
            self._trace.export_chrome_trace(str(path))
        except Exception as error:
            logger.warning("could not export the trace: %s", error)
            return None
        finally:
            self._trace = None
        return path

    def _label(self, name: str) -> contextlib.AbstractContextManager[Any]:
        """A named range in the trace while tracing; nothing otherwise."""
        if not self._tracing:
            return contextlib.nullcontext()
        return torch.profiler.record_function(name)
