"""Serve a model.tar.gz with the serving image's own toolkit and check its answers.

    python -m conformance.serving MODEL_TAR [--python PATH] [--override NAME==VERSION]

Lays the artefact out as the container has it (`<base>/model/`, SAGEMAKER_BASE_DIR=<base>),
starts `sagemaker_pytorch_serving_container.serving:main` (what the image's `serve` runs:
it writes TorchServe's config, installs code/requirements.txt and starts TorchServe
0.12 with the toolkit's handler service, which imports code/inference.py), waits for
/ping and checks real requests. Prints a JSON summary on stdout; exits 1 if a check fails.

A container has its own /etc, /tmp and network; this machine is shared. So the launcher
runs with three stand-ins for that isolation and nothing else changed: its TorchServe
config goes to <base>/etc instead of /etc, its search for "the" TorchServe process only
sees its own session (another TorchServe on the machine would make it give up), and
TorchServe's pid file, temp dir and side ports (metrics, gRPC) are private.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from chalice_app.config import Settings
from chalice_app.sagemaker_requests import model_request
from conformance.environments import add_override_argument, ensure_environment, progress
from infra.frameworks import INFERENCE
from local_aws.ports import free_port
from training.onnx_engine import EAGER_ENGINE, OPTIMISED_MODEL

CONTAINER_ML_DIR = "/opt/ml"
REGION = "us-east-1"
STARTUP_TIMEOUT_S = 300.0  # model_fn on shared CPUs, after TorchServe's JVM and worker start-up
REQUEST_TIMEOUT_S = 60.0
FAILED_LOADS = 3  # worker start-ups that failed before the check stops waiting
DEFAULT_TOP_K = 5  # inference.py's DEFAULT_TOP_K; the answer shape is part of the contract

# Run by the serving environment's interpreter: the image's launcher, with the isolation stand-ins.
LAUNCHER = """\
import os, sys, types
import psutil
from sagemaker_pytorch_serving_container import serving, torchserve

torchserve.TS_CONFIG_FILE = sys.argv[1]  # the container's /etc/sagemaker-ts.properties
session = os.getsid(0)

def process_iter():  # only this session: the launcher looks for exactly one TorchServe
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == session:
                yield process
        except OSError:
            pass

torchserve.psutil = types.SimpleNamespace(process_iter=process_iter, STATUS_ZOMBIE=psutil.STATUS_ZOMBIE)
serving.main()
"""


def log(event: str, **fields: object) -> None:
    progress("serving", event, **fields)


# --- the container's layout and environment --------------------------------------------


def container_environment(base: Path) -> dict[str, str]:
    """The model's container Environment, as the pipeline's CreateModel request sets it."""
    required: dict[str, Any] = {f.name: "conformance" for f in dataclasses.fields(Settings)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    settings = Settings(**{**required, "region": REGION})
    env = model_request(settings, "conformance", "s3://conformance/model.tar.gz")["PrimaryContainer"]["Environment"]
    # Container paths (/opt/ml/...) point into this run's base dir.
    return {key: str(base) + value[len(CONTAINER_ML_DIR):] if value.startswith(CONTAINER_ML_DIR + "/") else value
            for key, value in env.items()}


def unpack(model_tar: Path, base: Path) -> Path:
    """<base>/model holding the artefact, as SageMaker unpacks ModelDataUrl to /opt/ml/model."""
    model_dir = base / "model"
    model_dir.mkdir(parents=True)
    with tarfile.open(model_tar) as tar:
        tar.extractall(model_dir, filter="data")
    return model_dir


def server_environment(python: Path, base: Path, port: int) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}  # nothing of this repo's own
    private_tmp = base / "tmp"
    private_tmp.mkdir(exist_ok=True)
    env.update(container_environment(base))
    env.update({
        "PATH": f"{python.parent}{os.pathsep}{env.get('PATH', '')}",  # `torchserve` of the image
        "SAGEMAKER_BASE_DIR": str(base),
        "SAGEMAKER_BIND_TO_PORT": str(port),
        "SAGEMAKER_PROGRAM": "inference.py",
        "SAGEMAKER_SUBMIT_DIRECTORY": str(base / "model" / "code"),
        "SAGEMAKER_REGION": REGION,
        "PYTHONUNBUFFERED": "1",
        # Private pid file (TMPDIR), JVM temp dir (TEMP) and side ports (TorchServe reads
        # TS_* variables: the toolkit's config sets enable_envvars_config=true).
        "TMPDIR": str(private_tmp),
        "TEMP": str(private_tmp),
        "TS_METRICS_ADDRESS": f"http://127.0.0.1:{free_port()}",
        "TS_GRPC_INFERENCE_PORT": str(free_port()),
        "TS_GRPC_MANAGEMENT_PORT": str(free_port()),
    })
    return env


# --- the server's lifetime ----------------------------------------------------------------


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def last_error(path: Path) -> str | None:
    """The handler's last exception line (`ValueError: ...`) in TorchServe's interleaved log."""
    pattern = re.compile(r"MODEL_LOG - ((?:[\w.]+)(?:Error|Exception|Exit|Interrupt)\b.*)$")
    matches = [m.group(1) for m in map(pattern.search, log_tail(path, 2000).splitlines()) if m]
    return matches[-1] if matches else None


def session_pids(session: int) -> list[int]:
    """Every process of the launcher's session: the launcher, TorchServe's JVM, its workers."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == session:
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


def signal_all(pids: list[int], signo: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, signo)
        except OSError:
            pass


def stop_server(launcher: subprocess.Popen, env: dict[str, str], base: Path) -> list[int]:
    """`torchserve --stop`, then TERM and at last KILL the session; returns what survived."""
    try:
        subprocess.run(["torchserve", "--stop"], env=env, cwd=base, timeout=60,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        pass
    for signo, grace in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
        signal_all(session_pids(launcher.pid), signo)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and session_pids(launcher.pid):
            if launcher.poll() is None:
                try:
                    launcher.wait(timeout=0.2)
                except subprocess.TimeoutExpired:
                    pass
            else:
                time.sleep(0.2)
    return session_pids(launcher.pid)


@dataclasses.dataclass
class Response:
    status: int
    content_type: str
    body: bytes
    ms: float

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


def call(port: int, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None, timeout: float = REQUEST_TIMEOUT_S) -> Response:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method,
                                     headers=headers or {})
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            status, content_type, data = answer.status, answer.headers.get("Content-Type", ""), answer.read()
    except urllib.error.HTTPError as error:
        status, content_type, data = error.code, error.headers.get("Content-Type", ""), error.read()
    return Response(status, content_type, data, round((time.monotonic() - started) * 1000, 1))


def wait_for_ping(port: int, launcher: subprocess.Popen, server_log: Path, timeout: float) -> float:
    """Seconds until /ping answers 200; a clear error with the log's tail otherwise."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if launcher.poll() is not None:
            raise RuntimeError(f"the serving launcher exited with {launcher.returncode} before /ping "
                               f"answered; its log ends:\n{log_tail(server_log)}")
        try:
            if call(port, "GET", "/ping", timeout=5).status == 200:
                return round(time.monotonic() - started, 1)
        except OSError:  # not listening yet
            pass
        time.sleep(1.0)
    raise RuntimeError(f"/ping did not answer 200 within {timeout:.0f} s; the log ends:\n{log_tail(server_log)}")


def wait_for_workers(port: int, launcher: subprocess.Popen, server_log: Path, timeout: float) -> float | None:
    """Seconds until every worker has run model_fn: TorchServe's /ping is 200 before that.

    Read from TorchServe's describe-model API, which the toolkit serves on the same port;
    None where it does not answer (the checks then pay the wait on their first request).
    """
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if launcher.poll() is not None:
            raise RuntimeError(f"the serving launcher exited with {launcher.returncode} while its workers "
                               f"loaded the model; its log ends:\n{log_tail(server_log)}")
        log_text = log_tail(server_log, 2000)
        if log_text.count("Load model failed") >= FAILED_LOADS:  # TorchServe would retry forever
            raise RuntimeError(f"model_fn failed {FAILED_LOADS} times: {last_error(server_log)}; "
                               f"the log ends:\n{log_tail(server_log)}")
        response = call(port, "GET", "/models/model", timeout=5)
        if response.status != 200:
            return None
        model = json.loads(response.body)[0]
        workers = model.get("workers", [])
        if workers and len(workers) >= model.get("minWorkers", 1) and all(w.get("status") == "READY" for w in workers):
            return round(time.monotonic() - started, 1)
        time.sleep(1.0)
    raise RuntimeError(f"workers not READY within {timeout:.0f} s of /ping; the log ends:\n{log_tail(server_log)}")


# --- requests and what their answers must be ----------------------------------------------


def make_image(fmt: str, seed: int, height: int = 48, width: int = 64) -> bytes:
    """Smooth colour with noise, as tests/inference/images.py makes them."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // (width - 1), y * 255 // (height - 1), (x * y + seed * 40) % 256], axis=2)
    pixels = np.clip(rgb + rng.integers(-20, 20, rgb.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return out.getvalue()


class CheckFailed(Exception):
    pass


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def expect_status(response: Response, status: int) -> None:
    expect(response.status == status, f"status {response.status}, wanted {status}: {response.text()[:300]}")


def check_answer(response: Response, classes: list[str], images: int, top_k: int, engine: str) -> list[list[dict]]:
    """inference.py's documented answer: model_version, engine, num_classes, top-k per image, best first.

    `engine` is what must serve: the artefact's optimised model as its job measured it (a runtime
    that did not install or import in the image would leave eager PyTorch serving, unnoticed)."""
    expect_status(response, 200)
    expect(response.content_type.split(";")[0].strip() == "application/json",
           f"Content-Type {response.content_type!r}, wanted application/json")
    answer = json.loads(response.body)
    expect(isinstance(answer, dict) and set(answer) == {"model_version", "engine", "num_classes", "predictions"},
           f"answer keys {sorted(answer) if isinstance(answer, dict) else type(answer).__name__}")
    expect(isinstance(answer["model_version"], str) and answer["model_version"] != "", "model_version empty")
    expect(answer["engine"] == engine, f"engine {answer['engine']!r} serves, wanted {engine!r}")
    expect(answer["num_classes"] == len(classes), f"num_classes {answer['num_classes']}, artefact has {len(classes)}")
    predictions = answer["predictions"]
    expect(isinstance(predictions, list) and len(predictions) == images,
           f"{len(predictions)} answers for {images} images")
    for ranked in predictions:
        expect(len(ranked) == min(top_k, len(classes)), f"{len(ranked)} labels, wanted top {top_k}")
        probabilities = [entry["probability"] for entry in ranked]
        expect(all(entry["label"] in classes for entry in ranked), f"unknown label in {ranked}")
        expect(all(isinstance(p, float) and 0.0 <= p <= 1.0 for p in probabilities), f"probabilities {probabilities}")
        expect(probabilities == sorted(probabilities, reverse=True), "labels not ranked best first")
        expect(sum(probabilities) <= 1.0 + 1e-4, f"probabilities sum to {sum(probabilities)}")
    return predictions


def check_client_error(response: Response, status: int | None) -> dict[str, Any]:
    """A 4xx (or exactly `status`) whose body begins with a sentence a person can read."""
    if status is not None:
        expect_status(response, status)
    expect(400 <= response.status < 500, f"status {response.status}, wanted 4xx: {response.text()[:300]}")
    first_line = response.text().strip().splitlines()[0] if response.text().strip() else ""
    expect(bool(first_line) and not first_line.startswith("Traceback") and len(first_line) <= 500,
           f"no readable message: {response.text()[:300]!r}")
    # The toolkit appends the handler's traceback to the message; record it, clients see it.
    return {"message": first_line, "traceback_in_body": "Traceback (most recent call last)" in response.text()}


def run_checks(port: int, classes: list[str], engine: str) -> list[dict[str, Any]]:
    jpeg, png = make_image("JPEG", seed=0), make_image("PNG", seed=1)
    batch = [jpeg, png, make_image("JPEG", seed=2)]
    singles: dict[str, list[list[dict]]] = {}

    def ping() -> dict[str, Any]:
        response = call(port, "GET", "/ping")
        expect_status(response, 200)
        return {"ms": response.ms}

    def image(name: str, data: bytes, content_type: str) -> Callable[[], dict[str, Any]]:
        def check() -> dict[str, Any]:
            response = call(port, "POST", "/invocations", data, {"Content-Type": content_type,
                                                                   "Accept": "application/json"})
            singles[name] = check_answer(response, classes, 1, DEFAULT_TOP_K, engine)
            return {"ms": response.ms, "top": singles[name][0][0]}
        return check

    def json_batch() -> dict[str, Any]:
        body = json.dumps({"images": [base64.b64encode(data).decode() for data in batch], "top_k": 3}).encode()
        response = call(port, "POST", "/invocations", body, {"Content-Type": "application/json"})
        predictions = check_answer(response, classes, len(batch), 3, engine)
        # One batched forward pass answers as the single requests did (same images, same model).
        for index, name in ((0, "jpeg"), (1, "png")):
            if name in singles:
                got = [(e["label"], round(e["probability"], 4)) for e in predictions[index]]
                want = [(e["label"], round(e["probability"], 4)) for e in singles[name][0][:3]]
                expect(got == want, f"batch answer {index} {got} differs from the single {name} answer {want}")
        return {"ms": response.ms, "images": len(batch)}

    def top_k_header() -> dict[str, Any]:
        response = call(port, "POST", "/invocations", jpeg, {"Content-Type": "image/jpeg",
                                                              "X-Amzn-SageMaker-Custom-Attributes": "top_k=2"})
        check_answer(response, classes, 1, 2, engine)
        return {"ms": response.ms}

    def corrupt() -> dict[str, Any]:
        body = jpeg[:4] + b"this is not image data " * 20
        response = call(port, "POST", "/invocations", body, {"Content-Type": "image/jpeg"})
        return {"ms": response.ms, "status": response.status, **check_client_error(response, None)}

    def unsupported() -> dict[str, Any]:
        response = call(port, "POST", "/invocations", b"hello", {"Content-Type": "text/plain"})
        return {"ms": response.ms, "status": response.status, **check_client_error(response, 415)}

    checks: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("ping", ping), ("jpeg", image("jpeg", jpeg, "image/jpeg")), ("png", image("png", png, "image/png")),
        ("gif", image("gif", make_image("GIF", seed=3), "image/gif")),
        ("bmp", image("bmp", make_image("BMP", seed=4), "application/x-image")),
        ("json_batch", json_batch), ("top_k_header", top_k_header), ("corrupt_image_4xx", corrupt),
        ("unsupported_type_415", unsupported),
    ]
    results = []
    for name, check in checks:
        started = time.monotonic()
        try:
            result = {"check": name, "ok": True, **check()}
        except (CheckFailed, OSError, ValueError, KeyError, TypeError) as error:
            result = {"check": name, "ok": False, "error": f"{type(error).__name__}: {error}"}
        result["seconds"] = round(time.monotonic() - started, 2)
        log("checked", name=name, ok=result["ok"], seconds=result["seconds"])
        results.append(result)
    return results


# --- the whole check ----------------------------------------------------------------------


def serving_engine(model_dir: Path) -> str:
    """The engine the artefact must be served with: its optimised model's, when it holds one."""
    if not (model_dir / OPTIMISED_MODEL).exists():
        return EAGER_ENGINE
    return json.loads((model_dir / "metadata.json").read_text())["optimised"]["engine"]


def serve_and_check(model_tar: Path, python: Path, startup_timeout: float = STARTUP_TIMEOUT_S) -> dict[str, Any]:
    started = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="conformance-serving-"))
    summary: dict[str, Any] = {"model_tar": str(model_tar), "python": str(python), "ok": False}
    launcher: subprocess.Popen | None = None
    env: dict[str, str] = {}
    try:
        model_dir = unpack(model_tar, base)
        classes = [str(name) for name in json.loads((model_dir / "classes.json").read_text())]
        port = free_port()
        env = server_environment(python, base, port)
        (base / "etc").mkdir()
        server_log = base / "serving.log"
        log("start", base=base, port=port)
        with server_log.open("wb") as sink:
            # A session of its own: everything TorchServe starts can be found and stopped.
            launcher = subprocess.Popen([str(python), "-c", LAUNCHER, str(base / "etc" / "sagemaker-ts.properties")],
                                        cwd=base, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        summary["ping_ready_seconds"] = wait_for_ping(port, launcher, server_log, startup_timeout)
        summary["workers_ready_after_ping_seconds"] = wait_for_workers(port, launcher, server_log, startup_timeout)
        log("ready", ping_seconds=summary["ping_ready_seconds"],
            workers_ready_after_ping_seconds=summary["workers_ready_after_ping_seconds"])
        summary["engine"] = serving_engine(model_dir)
        summary["checks"] = run_checks(port, classes, summary["engine"])
        summary["ok"] = all(check["ok"] for check in summary["checks"])
        if not summary["ok"]:
            summary["log_tail"] = log_tail(server_log)
    except (RuntimeError, OSError, ValueError, tarfile.TarError) as error:
        summary["error"] = str(error)
        log("failed", error=str(error).splitlines()[0])
    finally:
        if launcher is not None:
            leftover = stop_server(launcher, env, base)
            summary["leftover_processes"] = leftover
            summary["ok"] = summary["ok"] and not leftover
            log("stopped", leftover=leftover)
        shutil.rmtree(base, ignore_errors=True)
    summary["seconds"] = round(time.monotonic() - started, 1)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_tar", type=Path)
    parser.add_argument("--python", type=Path, help="the serving environment's interpreter "
                                                    "(default: build or reuse the INFERENCE environment)")
    parser.add_argument("--startup-timeout", type=float, default=STARTUP_TIMEOUT_S)
    add_override_argument(parser)
    args = parser.parse_args(argv)
    # A cancelled CI job sends SIGTERM: unwind through serve_and_check's cleanup.
    signal.signal(signal.SIGTERM, lambda signo, frame: sys.exit(128 + signo))
    python = args.python.absolute() if args.python else ensure_environment(INFERENCE, dict(args.override))
    summary = serve_and_check(args.model_tar.resolve(), python, args.startup_timeout)
    print(json.dumps(summary, indent=2))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
