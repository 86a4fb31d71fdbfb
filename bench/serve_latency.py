"""Serving benchmark: the eager host, the optimised host and TorchServe, side by side in one run.

    python bench/serve_latency.py [--model model.tar.gz] [--requests 100] [--seconds 6] [--torchserve auto|off]

Workload: one 224-pixel JPEG through decode, resize 256, crop 224, normalise, a
ResNet-18 forward pass, softmax and top-5 (a random-init ResNet-18 with 1000 classes
unless --model names an artefact). Everything is measured in this one run, because
absolute times drift between runs and machines:

- bare: the handler's functions on the EAGER model in a process of their own (batch 1, all
  cores as torch threads, the model loaded on the thread that runs it, as the host does);
  its latencies are taken in rounds that alternate with each host's (same count each),
  so a machine whose speed drifts during the run moves both figures alike;
- the in-process eager ceilings for 8 clients: cores processes x 1 thread, and batches of 8
  with all cores as threads, measured before and after the hosts (their mean is used);
- the hosts, per configuration: p50/p99 of one client's sequential requests, and images/s
  with 8 concurrent clients (keep-alive connections): the project's host serving the eager
  model (the artefact without model.onnx), the same host serving the optimised model
  (training/optimised.py builds it here as the final job does, int8 calibrated on the
  benchmark's own preprocessed images), and TorchServe 0.12 in its best configuration
  (BENCHMARKS.md: 2 workers x 1 thread, batch 4, 10 ms) running the same handler functions
  on the eager model, installed from the registry into a scratch venv (never committed).

Prints JSON with the ratios the goals are stated in: the optimised host's 8-client
throughput over TorchServe's and over the eager host's, and its p50 over bare eager.
With a random-init model the optimised model's agreement figure says nothing (its logits
are near-ties); the agreement goal is the training job's, on real data.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from local_aws.endpoint_host import EndpointHost, safe_extract  # noqa: E402
from local_aws.endpoint_host.server import cpu_count  # noqa: E402

TORCHSERVE_BEST_IMG_S = 50.9  # BENCHMARKS: TorchServe 0.12, 2 workers x 1 thread, batch 4, 10 ms
CLIENTS = 8
ARCH = os.environ.get("BENCH_ARCH", "resnet18")  # resnet50 for the note's second figure


def split_artefact(model_dir: Path, work: Path) -> tuple[Path, Path]:
    """(eager dir, optimised dir): the eager one without model.onnx; the optimised one with it,
    built here as the final job builds it when the artefact has none (threshold 0: the figure is printed)."""
    import shutil

    from training.onnx_engine import OPTIMISED_MODEL

    eager, optimised = work / "eager", work / "optimised"
    shutil.copytree(model_dir, eager)
    shutil.copytree(model_dir, optimised)
    (eager / OPTIMISED_MODEL).unlink(missing_ok=True)
    if not (optimised / OPTIMISED_MODEL).exists():
        build_optimised_model(eager, optimised)
    return eager, optimised


def build_optimised_model(eager_dir: Path, target: Path) -> None:
    import torch

    from inference import inference as handler
    from training.optimised import optimise_in_job
    from training.presets import decode_rgb

    torch.set_num_threads(cpu_count())
    model = handler.model_fn(eager_dir)
    images = [model.preset(decode_rgb(make_jpeg(seed))) for seed in range(48)]
    outcome = optimise_in_job(model.module, images[:32], images[32:], target, min_agreement=0.0,
                              print_line=lambda line: print(line, file=sys.stderr, flush=True))
    print(json.dumps({"optimised_model": outcome.to_dict()}), file=sys.stderr, flush=True)


def make_artefact(work: Path) -> Path:
    """A random-init ResNet-18 artefact (eager only)."""
    import torch

    from training import artifact
    from training.model import ModelSpec, build_model
    from training.presets import ClassificationPresetEval

    torch.manual_seed(0)
    spec = ModelSpec(arch=ARCH, num_classes=1000)
    buffer = io.BytesIO()
    torch.save(build_model(spec).state_dict(), buffer)
    artifact.write_model_dir(work / "model", state_dict_bytes=buffer.getvalue(),
                             classes=[f"class-{i}" for i in range(spec.num_classes)], spec=spec.to_dict(),
                             preprocessing=ClassificationPresetEval().to_dict(), metadata={"version": "bench"})
    return artifact.pack_model_dir(work / "model", work / "model.tar.gz")


def make_jpeg(seed: int = 0) -> bytes:
    """The benchmark's JPEG (seed 0); other seeds add noise and a shift, for calibration images."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:224, 0:224]
    rgb = np.stack([(x * 255 // 223), (y * 255 // 223), ((x + y) * 255 // 446)], axis=2).astype(np.int64)
    if seed:
        rng = np.random.default_rng(seed)
        rgb = np.roll(rgb, int(rng.integers(0, 224)), axis=int(rng.integers(0, 2))) + rng.integers(-40, 40, rgb.shape)
    rgb = np.clip(rgb, 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, "JPEG", quality=90)
    return out.getvalue()


def percentiles(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {"p50_ms": round(statistics.median(ordered) * 1000, 2),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 2)}


# --- in-process work, each in a fresh process so that no torch pool of this one spins ---


def _in_process(model_dir: str, threads: int, batch: int, requests: int, seconds: float, start, results,
                on_thread: bool = True) -> None:
    if on_thread:
        # The host runs its model on a thread of its own; on this machine, under CPU contention, the same
        # forward pass from the main thread measured up to 4x slower, which would flatter the host.
        worker = threading.Thread(target=_in_process, args=(model_dir, threads, batch, requests, seconds, start,
                                                            results, False))
        worker.start()
        worker.join()
        return
    import torch

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    from inference import inference as handler

    model = handler.model_fn(model_dir)
    body = make_jpeg()

    def once() -> None:
        request = handler.merge_requests([handler.input_fn(body, "image/jpeg") for _ in range(batch)])
        handler.output_fn(handler.predict_fn(request, model), "application/json")

    for _ in range(5):
        once()
    start.wait()
    if requests:
        latencies = []
        for _ in range(requests):
            began = time.perf_counter()
            once()
            latencies.append(time.perf_counter() - began)
        results.put(latencies)
    else:
        done, began = 0, time.perf_counter()
        while time.perf_counter() - began < seconds:
            once()
            done += batch
        results.put(done / (time.perf_counter() - began))


def _in_process_here(model_dir: Path, processes: int, threads: int, batch: int, requests: int,
                     seconds: float) -> list:
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(processes + 1), context.Queue()
    children = [context.Process(target=_in_process, args=(str(model_dir), threads, batch, requests, seconds,
                                                          start, results)) for _ in range(processes)]
    for child in children:
        child.start()
    start.wait()
    answers = [results.get() for _ in children]
    for child in children:
        child.join()
    return answers


def in_process(model_dir: Path, *, processes: int, threads: int, batch: int = 1, requests: int = 0,
               seconds: float = 0.0) -> list:
    """Run the in-process workload in a session of its own, as the host runs in one.

    Linux's autogroup scheduler shares the CPU between sessions first: on a machine busy
    with other work, a host in its own session and a bare run in this one would not get
    the same share, and the ratio would measure the scheduler, not the server.
    """
    spec = json.dumps({"model_dir": str(model_dir), "processes": processes, "threads": threads, "batch": batch,
                       "requests": requests, "seconds": seconds})
    result = subprocess.run([sys.executable, __file__, "--in-process", spec], capture_output=True, text=True,
                            check=True, start_new_session=True)
    return json.loads(result.stdout.strip().splitlines()[-1])



class BareProcess:
    """The bare workload in a process (and session) of its own, answering rounds on demand."""

    def __init__(self, model_dir: Path, threads: int):
        self._process = subprocess.Popen(
            [sys.executable, __file__, "--bare", json.dumps({"model_dir": str(model_dir), "threads": threads})],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
        if self._readline() != "ready":
            raise RuntimeError("the bare process did not start")

    def _readline(self) -> str:
        assert self._process.stdout is not None
        return self._process.stdout.readline().strip()

    def latencies(self, requests: int) -> list[float]:
        assert self._process.stdin is not None
        self._process.stdin.write(f"{requests}\n")
        self._process.stdin.flush()
        return json.loads(self._readline())

    def close(self) -> None:
        self._process.kill()
        self._process.wait()


def _bare_serve(model_dir: str, threads: int) -> None:
    """--bare: load on a thread, then time `n` sequential requests per line read from stdin."""
    def serve() -> None:
        import torch

        torch.set_num_threads(threads)
        torch.set_num_interop_threads(1)
        from inference import inference as handler

        model, body = handler.model_fn(model_dir), make_jpeg()
        for _ in range(5):
            handler.output_fn(handler.predict_fn(handler.input_fn(body, "image/jpeg"), model), "application/json")
        print("ready", flush=True)
        for line in sys.stdin:
            latencies = []
            for _ in range(int(line)):
                began = time.perf_counter()
                handler.output_fn(handler.predict_fn(handler.input_fn(body, "image/jpeg"), model), "application/json")
                latencies.append(time.perf_counter() - began)
            print(json.dumps(latencies), flush=True)

    worker = threading.Thread(target=serve)
    worker.start()
    worker.join()


# --- the host, over HTTP ---------------------------------------------------------------


def _post(connection: http.client.HTTPConnection, body: bytes, path: str = "/invocations") -> None:
    connection.request("POST", path, body=body, headers={"Content-Type": "image/jpeg"})
    answer = connection.getresponse()
    payload = answer.read()
    if answer.status != 200:
        raise RuntimeError(f"host answered {answer.status}: {payload[:200]!r}")


def paired_latency(port: int, bare: BareProcess, body: bytes, requests: int,
                   rounds: int = 5, path: str = "/invocations") -> tuple[list[float], list[float], float]:
    """(host latencies, bare latencies, host sequential img/s), in alternating rounds."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for _ in range(5):
        _post(connection, body, path)
    host, bare_latencies, busy = [], [], 0.0
    per_round = max(1, requests // rounds)
    for _ in range(rounds):
        bare_latencies += bare.latencies(per_round)
        began = time.perf_counter()
        for _ in range(per_round):
            sent = time.perf_counter()
            _post(connection, body, path)
            host.append(time.perf_counter() - sent)
        busy += time.perf_counter() - began
    connection.close()
    return host, bare_latencies, len(host) / busy


def host_throughput(port: int, body: bytes, seconds: float, clients: int = CLIENTS,
                    path: str = "/invocations") -> float:
    counts = [0] * clients
    start, stop_at = threading.Barrier(clients + 1), [0.0]

    def client(index: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        _post(connection, body, path)
        start.wait()
        while time.perf_counter() < stop_at[0]:
            _post(connection, body, path)
            counts[index] += 1
        connection.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    stop_at[0] = time.perf_counter() + 1e9
    start.wait()
    began = time.perf_counter()
    stop_at[0] = began + seconds
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - began)


# --- TorchServe, from the registry, in a scratch folder ------------------------------------

TORCHSERVE_VERSION = "0.12.0"  # the serving image's (infra/frameworks.py)
TORCHSERVE_HANDLER = """\
# TorchServe handler written by bench/serve_latency.py: the project's own handler functions, batched by TorchServe.
import os, sys
sys.path.insert(0, {repo!r})
import torch
torch.set_num_threads({threads})
torch.set_num_interop_threads(1)
from inference import inference as handler

_model = None

def handle(data, context):
    global _model
    if _model is None:
        _model = handler.model_fn({model_dir!r})
    if data is None:
        return None
    requests = [handler.input_fn(bytes(row.get("body") or row.get("data")), "image/jpeg") for row in data]
    parts = handler.split_prediction(handler.predict_fn(handler.merge_requests(requests), _model), requests)
    return [handler.output_fn(part, "application/json")[0] for part in parts]
"""


class TorchServe:
    """TorchServe (pip-installed into `scratch`/venv) serving the eager model dir through the project's handler.

    The venv sees this interpreter's packages (torch, the repo's dependencies) through a .pth
    file, so its workers run the same torch as the other hosts; only TorchServe is its own."""

    def __init__(self, scratch: Path, model_dir: Path, *, workers: int, threads: int, batch: int, delay_ms: int):
        self.scratch, self.model_dir = scratch, model_dir
        self.workers, self.threads, self.batch, self.delay_ms = workers, threads, batch, delay_ms
        self.port = _free_port()
        self._process: subprocess.Popen | None = None

    @staticmethod
    def install(scratch: Path) -> Path:
        import sysconfig

        venv = scratch / "torchserve-venv"
        fresh = not (venv / "bin" / "torchserve").exists()
        if fresh:
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        # Every run, not only at creation: the venv outlives the interpreter that made it (a deleted
        # clone's venv left TorchServe without psutil, and it exited at start).
        site = next((venv / "lib").glob("python3*/site-packages"))
        (site / "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        if fresh:
            subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", f"torchserve=={TORCHSERVE_VERSION}",
                            f"torch-model-archiver=={TORCHSERVE_VERSION}"], check=True, stdout=sys.stderr)
        return venv

    def __enter__(self) -> "TorchServe":
        venv = self.install(self.scratch)
        work = self.scratch / f"ts-{self.port}"
        store = work / "store"
        store.mkdir(parents=True)
        handler = work / "handler.py"
        handler.write_text(TORCHSERVE_HANDLER.format(repo=str(REPO_ROOT), threads=self.threads,
                                                     model_dir=str(self.model_dir)))
        subprocess.run([str(venv / "bin" / "torch-model-archiver"), "--model-name", "model", "--version", "1.0",
                        "--handler", str(handler), "--export-path", str(store)], check=True)
        models = {"model": {"1.0": {"defaultVersion": True, "marName": "model.mar", "minWorkers": self.workers,
                                    "maxWorkers": self.workers, "batchSize": self.batch,
                                    "maxBatchDelay": self.delay_ms, "responseTimeout": 120}}}
        (work / "config.properties").write_text("\n".join([
            f"inference_address=http://127.0.0.1:{self.port}", f"management_address=http://127.0.0.1:{_free_port()}",
            f"metrics_address=http://127.0.0.1:{_free_port()}", f"model_store={store}",
            "disable_token_authorization=true", "enable_metrics_api=false", "load_models=model.mar",
            f"models={json.dumps(models)}",
            "default_response_timeout=120"]) + "\n")
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "LOG_LOCATION": str(work / "logs"),
               "METRICS_LOCATION": str(work / "logs"),
               # TorchServe keeps its pid file in the temporary directory and refuses to start beside another.
               "TMPDIR": str(work), "PATH": f"{venv / 'bin'}:{os.environ.get('PATH', '')}"}
        self._process = subprocess.Popen([str(venv / "bin" / "torchserve"), "--start", "--foreground", "--ncs",
                                          "--ts-config", str(work / "config.properties"), "--model-store", str(store),
                                          "--disable-token-auth"],
                                         cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         start_new_session=True)
        try:
            self._wait_ready(work)
        except BaseException:
            self.__exit__()  # `with` calls __exit__ only after __enter__ returned: stop what started
            raise
        return self

    def _wait_ready(self, work: Path) -> None:
        assert self._process is not None
        deadline = time.monotonic() + 300
        body = make_jpeg()
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"torchserve exited with {self._process.returncode}; logs in {work / 'logs'}")
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                _post(connection, body, PREDICTIONS)
                connection.close()
                return
            except (OSError, RuntimeError, http.client.HTTPException):
                time.sleep(1)
        raise RuntimeError(f"torchserve not answering after 300 s; logs in {work / 'logs'}")

    def __exit__(self, *exc) -> None:
        if self._process is not None:
            try:
                os.killpg(self._process.pid, signal.SIGTERM)
            except ProcessLookupError:  # the whole group has ended already (a failed start)
                self._process.wait()
                return
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait()


PREDICTIONS = "/predictions/model"  # TorchServe's path; the project's host answers SageMaker's /invocations


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- what runs ------------------------------------------------------------------------------


def host_configs(cores: int) -> list[dict]:
    """(name, which model, the host's options); `which` is eager | optimised | torchserve."""
    return [
        {"name": "eager host (default: 1 worker x all threads, batch 8, wait 0 ms)", "model": "eager"},
        {"name": "optimised host (default: 1 worker x all threads, batch 8, wait 0 ms)", "model": "optimised"},
        {"name": f"optimised host, {cores} workers x 1 thread, batch {CLIENTS // cores}", "model": "optimised",
         "workers": cores, "max_batch_size": max(1, CLIENTS // cores)},
        {"name": "optimised host, 1 worker x all threads, no batching", "model": "optimised", "max_batch_size": 1},
        {"name": f"TorchServe {TORCHSERVE_VERSION} best ({cores} workers x 1 thread, batch 4, 10 ms)",
         "model": "torchserve", "workers": cores, "threads": 1, "batch": 4, "delay_ms": 10},
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a model.tar.gz; default: a random-init ResNet-18, 224 px")
    parser.add_argument("--requests", type=int, default=100, help="sequential requests per latency figure")
    parser.add_argument("--seconds", type=float, default=6.0, help="duration of each throughput figure")
    parser.add_argument("--only", type=int, nargs="*", help="indices of the host configurations to run")
    parser.add_argument("--torchserve", choices=("auto", "off"), default="auto",
                        help="off: skip TorchServe and print the reference figure instead")
    parser.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()) / "serve-bench-scratch",
                        help="where TorchServe's venv is installed (kept between runs, never in the repository)")
    parser.add_argument("--in-process", help=argparse.SUPPRESS)  # internal: one in-process measurement
    parser.add_argument("--bare", help=argparse.SUPPRESS)  # internal: the bare latency process
    args = parser.parse_args()
    if args.bare:
        _bare_serve(**json.loads(args.bare))
        return
    if args.in_process:
        spec = json.loads(args.in_process)
        print(json.dumps(_in_process_here(Path(spec.pop("model_dir")), **spec)))
        return
    cores = cpu_count()
    body = make_jpeg()
    args.scratch.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="serve-bench-") as scratch:
        work = Path(scratch)
        model_tar = args.model or make_artefact(work)
        eager_dir, optimised_dir = split_artefact(safe_extract(model_tar, work / "unpacked"), work)

        def measure_ceilings() -> dict[str, float]:
            return {
                f"{cores} processes x 1 thread": sum(in_process(eager_dir, processes=cores, threads=1,
                                                               seconds=args.seconds)),
                f"batch {CLIENTS}, {cores} threads": in_process(eager_dir, processes=1, threads=cores, batch=CLIENTS,
                                                                 seconds=args.seconds)[0],
            }

        before = measure_ceilings()
        bare = BareProcess(eager_dir, cores)
        hosts, errors = [], {}
        try:
            for index, config in enumerate(host_configs(cores)):
                if args.only is not None and index not in args.only:
                    continue
                options = {k: v for k, v in config.items() if k not in ("name", "model")}
                try:
                    if config["model"] == "torchserve":
                        if args.torchserve == "off":
                            continue
                        server = TorchServe(args.scratch, eager_dir, **options)
                        path = PREDICTIONS
                    else:
                        server = EndpointHost(eager_dir if config["model"] == "eager" else optimised_dir, **options)
                        path = "/invocations"
                    with server as running:
                        latencies, bare_latencies, sequential = paired_latency(running.port, bare, body,
                                                                               args.requests, path=path)
                        throughput = host_throughput(running.port, body, args.seconds, path=path)
                        engine = _engine(running.port, body, path)
                except Exception as error:  # noqa: BLE001 - one host that cannot start must not lose the others
                    errors[config["name"]] = repr(error)
                    continue
                hosts.append((config, engine, latencies, bare_latencies, sequential, throughput))
        finally:
            bare.close()
        after = measure_ceilings()
        ceilings = {name: round((before[name] + after[name]) / 2, 1) for name in before}
        ceiling = max(ceilings.values())
        all_bare = [latency for host in hosts for latency in host[3]]
        by_model = {config["model"]: throughput for config, _e, _l, _b, _s, throughput in reversed(hosts)
                    if config["model"] != "optimised" or config.get("workers") is None}
        torchserve = by_model.get("torchserve")
        results = []
        for config, engine, latencies, bare_latencies, sequential, throughput in hosts:
            figures, paired_bare = percentiles(latencies), percentiles(bare_latencies)
            results.append({
                "config": config["name"], "engine": engine, **figures, "bare_p50_ms_same_rounds": paired_bare["p50_ms"],
                "sequential_img_s": round(sequential, 1), f"{CLIENTS}_clients_img_s": round(throughput, 1),
                "p50_over_bare_eager": round(figures["p50_ms"] / paired_bare["p50_ms"], 3),
                f"{CLIENTS}_clients_over_eager_ceiling": round(throughput / ceiling, 3),
                f"{CLIENTS}_clients_over_eager_host": round(throughput / by_model["eager"], 3)
                if by_model.get("eager") else None,
                f"{CLIENTS}_clients_over_torchserve_best": round(throughput / (torchserve or TORCHSERVE_BEST_IMG_S), 3),
            })
        bare_all = {**percentiles(all_bare), "sequential_img_s": round(len(all_bare) / sum(all_bare), 1)} \
            if all_bare else None

    print(json.dumps({
        "workload": "224 px JPEG: decode, resize 256, crop 224, normalise, forward, softmax, top-5",
        "model": str(args.model) if args.model else f"{ARCH} (random init, 1000 classes)",
        "cores": cores, "clients": CLIENTS, "load_average_1m": round(os.getloadavg()[0], 2),
        "bare_in_process_eager": bare_all, "in_process_eager_ceiling_img_s": ceilings,
        "in_process_ceiling_img_s_before_after": {name: [round(before[name], 1), round(after[name], 1)]
                                                   for name in before},
        "torchserve_best_img_s": torchserve, "torchserve_measured_in_this_run": torchserve is not None,
        "torchserve_best_img_s_reference": TORCHSERVE_BEST_IMG_S,
        "goals": {"optimised default host: 8_clients_over_torchserve_best": ">= 2.0",
                  "optimised default host: 8_clients_over_eager_host": ">= 1.8",
                  "optimised default host: p50_over_bare_eager": "<= 0.6"},
        "hosts": results, "errors": errors,
    }, indent=2))


def _engine(port: int, body: bytes, path: str) -> str | None:
    """What the host says it serves (the answer's `engine`)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("POST", path, body=body, headers={"Content-Type": "image/jpeg"})
    answer = json.loads(connection.getresponse().read())
    connection.close()
    return answer.get("engine") if isinstance(answer, dict) else None


if __name__ == "__main__":
    main()
