"""Serving benchmark: the local endpoint host against bare in-process inference, side by side.

    python bench/serve_latency.py [--model model.tar.gz] [--requests 100] [--seconds 6]

Workload: one 224-pixel JPEG through decode, resize 256, crop 224, normalise, a
ResNet-18 forward pass, softmax and top-5 (a random-init ResNet-18 with 1000 classes
unless --model names an artefact). Everything is measured in this one run, because
absolute times drift between runs and machines:

- bare: the same handler functions in a process of their own (batch 1, all cores as
  torch threads, the model loaded on the thread that runs it, as the host does);
  its latencies are taken in rounds that alternate with the host's (same count each),
  so a machine whose speed drifts during the run moves both figures alike;
- the in-process ceilings for 8 clients: cores processes x 1 thread, and batches of 8
  with all cores as threads, measured before and after the hosts (their mean is used);
- the host, per configuration: p50/p99 of one client's sequential requests, and
  images/s with 8 concurrent clients (keep-alive connections).

Prints JSON with the ratios the goals are stated in (p50 host / bare, 8-client
throughput / ceiling and / the host's own sequential rate) and the reference
TorchServe figure from the project's BENCHMARKS file.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import multiprocessing
import os
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


def make_artefact(work: Path) -> Path:
    import torch

    from training import artifact
    from training.model import ModelSpec, build_model
    from training.presets import ClassificationPresetEval

    torch.manual_seed(0)
    spec = ModelSpec(arch="resnet18", num_classes=1000)
    buffer = io.BytesIO()
    torch.save(build_model(spec).state_dict(), buffer)
    artifact.write_model_dir(work / "model", state_dict_bytes=buffer.getvalue(),
                             classes=[f"class-{i}" for i in range(spec.num_classes)], spec=spec.to_dict(),
                             preprocessing=ClassificationPresetEval().to_dict(), metadata={"version": "bench"})
    return artifact.pack_model_dir(work / "model", work / "model.tar.gz")


def make_jpeg() -> bytes:
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:224, 0:224]
    rgb = np.stack([(x * 255 // 223), (y * 255 // 223), ((x + y) * 255 // 446)], axis=2).astype(np.uint8)
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


def _post(connection: http.client.HTTPConnection, body: bytes) -> None:
    connection.request("POST", "/invocations", body=body, headers={"Content-Type": "image/jpeg"})
    answer = connection.getresponse()
    payload = answer.read()
    if answer.status != 200:
        raise RuntimeError(f"host answered {answer.status}: {payload[:200]!r}")


def paired_latency(port: int, bare: BareProcess, body: bytes, requests: int,
                   rounds: int = 5) -> tuple[list[float], list[float], float]:
    """(host latencies, bare latencies, host sequential img/s), in alternating rounds."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for _ in range(5):
        _post(connection, body)
    host, bare_latencies, busy = [], [], 0.0
    per_round = max(1, requests // rounds)
    for _ in range(rounds):
        bare_latencies += bare.latencies(per_round)
        began = time.perf_counter()
        for _ in range(per_round):
            sent = time.perf_counter()
            _post(connection, body)
            host.append(time.perf_counter() - sent)
        busy += time.perf_counter() - began
    connection.close()
    return host, bare_latencies, len(host) / busy


def host_throughput(port: int, body: bytes, seconds: float, clients: int = CLIENTS) -> float:
    counts = [0] * clients
    start, stop_at = threading.Barrier(clients + 1), [0.0]

    def client(index: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        _post(connection, body)
        start.wait()
        while time.perf_counter() < stop_at[0]:
            _post(connection, body)
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


def host_configs(cores: int) -> list[dict]:
    return [
        {"name": "default: 1 worker x all threads, batch 8, wait 0 ms"},
        {"name": "1 worker x all threads, no batching", "max_batch_size": 1},
        {"name": f"{cores} workers x 1 thread, no batching", "workers": cores, "max_batch_size": 1},
        {"name": "1 worker x all threads, batch 8, wait 5 ms", "max_batch_wait_ms": 5.0},
        {"name": f"{cores} workers x 1 thread, batch {CLIENTS // cores}, wait 0 ms", "workers": cores,
         "max_batch_size": max(1, CLIENTS // cores)},
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a model.tar.gz; default: a random-init ResNet-18, 224 px")
    parser.add_argument("--requests", type=int, default=100, help="sequential requests per latency figure")
    parser.add_argument("--seconds", type=float, default=6.0, help="duration of each throughput figure")
    parser.add_argument("--only", type=int, nargs="*", help="indices of the host configurations to run")
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

    with tempfile.TemporaryDirectory(prefix="serve-bench-") as scratch:
        work = Path(scratch)
        model_tar = args.model or make_artefact(work)
        model_dir = safe_extract(model_tar, work / "unpacked")

        def measure_ceilings() -> dict[str, float]:
            return {
                f"{cores} processes x 1 thread": sum(in_process(model_dir, processes=cores, threads=1,
                                                               seconds=args.seconds)),
                f"batch {CLIENTS}, {cores} threads": in_process(model_dir, processes=1, threads=cores, batch=CLIENTS,
                                                                 seconds=args.seconds)[0],
            }

        before = measure_ceilings()
        bare = BareProcess(model_dir, cores)
        hosts, all_bare = [], []
        try:
            for index, config in enumerate(host_configs(cores)):
                if args.only is not None and index not in args.only:
                    continue
                options = {k: v for k, v in config.items() if k != "name"}
                with EndpointHost(model_tar, **options) as host:
                    latencies, bare_latencies, sequential = paired_latency(host.port, bare, body, args.requests)
                    throughput = host_throughput(host.port, body, args.seconds)
                all_bare += bare_latencies
                hosts.append((config["name"], latencies, bare_latencies, sequential, throughput))
        finally:
            bare.close()
        after = measure_ceilings()
        ceilings = {name: round((before[name] + after[name]) / 2, 1) for name in before}
        ceiling = max(ceilings.values())
        results = []
        for name, latencies, bare_latencies, sequential, throughput in hosts:
            figures, paired_bare = percentiles(latencies), percentiles(bare_latencies)
            results.append({
                "config": name, **figures, "bare_p50_ms_same_rounds": paired_bare["p50_ms"],
                "sequential_img_s": round(sequential, 1), f"{CLIENTS}_clients_img_s": round(throughput, 1),
                "p50_over_bare": round(figures["p50_ms"] / paired_bare["p50_ms"], 3),
                f"{CLIENTS}_clients_over_ceiling": round(throughput / ceiling, 3),
                f"{CLIENTS}_clients_over_sequential": round(throughput / sequential, 3),
                f"{CLIENTS}_clients_over_torchserve_best": round(throughput / TORCHSERVE_BEST_IMG_S, 3),
            })
        bare_all = {**percentiles(all_bare), "sequential_img_s": round(len(all_bare) / sum(all_bare), 1)}

    print(json.dumps({
        "workload": "224 px JPEG: decode, resize 256, crop 224, normalise, forward, softmax, top-5",
        "model": str(args.model) if args.model else "resnet18 (random init, 1000 classes)",
        "cores": cores, "clients": CLIENTS, "load_average_1m": round(os.getloadavg()[0], 2),
        "bare_in_process": bare_all, "in_process_ceiling_img_s": ceilings,
        "in_process_ceiling_img_s_before_after": {name: [round(before[name], 1), round(after[name], 1)]
                                                   for name in before}, "torchserve_best_img_s_reference": TORCHSERVE_BEST_IMG_S,
        "goals": {"p50_over_bare": "<= 1.1", f"{CLIENTS}_clients_over_ceiling": ">= 0.95",
                  f"{CLIENTS}_clients_over_torchserve_best": "> 1.0"},
        "hosts": results,
    }, indent=2))


if __name__ == "__main__":
    main()
