"""The optimised model's runtime: an ONNX file in the artefact, run by OpenVINO or ONNX Runtime.

The final training job writes it (training/optimised.py, torch 2.8 in SageMaker's training
image) and the endpoint reads it (inference/inference.py, torch 2.6 in the serving image):
ONNX at a fixed opset is the one format both ends read alike, which pickled or TorchScript
quantized modules across torch versions are not. The file says its precision (int8 QDQ or
fp32) in its metadata; the runtime is the first of RUNTIMES that imports here. OpenVINO
comes first: on the endpoint's 2-core AVX2 CPUs it ran the same int8 QDQ file 1.6-2x faster
than ONNX Runtime (ONNX Runtime's int8 kernels want VNNI, which these CPUs lack).

This module travels in model.tar.gz's `code/`, so it imports only torch, numpy and (when
asked to run a model) the runtime.
"""

from __future__ import annotations

import ctypes
import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

OPTIMISED_MODEL = "model.onnx"  # the file's name in the artefact, beside model.pth
OPSET = 17  # fixed: the exporter of the training image and the runtimes of the serving image all speak it
INPUT_NAME, OUTPUT_NAME = "images", "logits"
# The optional second output: each image's embedding summary (training/embedding.py), present when
# the job exported the classifier with its projection.
EMBEDDING_OUTPUT = "embeddings"
OUTPUT_NAMES = (OUTPUT_NAME, EMBEDDING_OUTPUT)  # in the graph's output order
PRECISION_KEY = "precision"  # the model's metadata_props entry: "int8" or "fp32"
EAGER_ENGINE = "pytorch-eager"
OPENVINO, ONNXRUNTIME = "openvino", "onnxruntime"
RUNTIMES = (OPENVINO, ONNXRUNTIME)  # in order of preference (measured; see the docstring)


class EngineUnavailable(RuntimeError):
    """The optimised model cannot be served here (no runtime, or a file it refuses)."""


def import_runtime(name: str) -> ModuleType:
    """A runtime's module, or EngineUnavailable: one place, so the fallback is testable."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise EngineUnavailable(f"{name} does not import: {error}") from None


Run = Callable[[np.ndarray], list[np.ndarray]]  # a batch to every output of the model, in order


class _SignalStack(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


@contextmanager
def keeping_signal_stack() -> Iterator[None]:
    """The calling thread's alternate signal stack as it was before, whatever the block does to it.

    OpenVINO's CPU plugin installs its own alternate stack on the thread that compiles a model and
    puts back the one it found when the plugin is released; two plugins released out of order leave
    the thread on a freed stack. Python runs its signal handlers there (SA_ONSTACK), so the next one
    that fired, torch's SIGCHLD handler when a child process ended, killed the process with SIGSEGV
    (seen in the training job's process and in test workers). With the stack put back after each
    compilation, every plugin finds, and later puts back, a stack that stays valid."""
    try:
        sigaltstack = ctypes.CDLL(None, use_errno=True).sigaltstack
    except (OSError, AttributeError):  # no such call here (not POSIX): nothing to keep
        yield
        return
    saved = _SignalStack()
    if sigaltstack(None, ctypes.byref(saved)) != 0:
        yield
        return
    try:
        yield
    finally:
        sigaltstack(ctypes.byref(saved), None)


def _openvino(path: Path, threads: int) -> tuple[Run, str, int]:
    """The model compiled for one image (static shapes: OpenVINO's dynamic-batch path measured 1.5x
    slower per image here), run for a lone image with all threads on it, and for a batch as one
    request per image over `threads` single-threaded streams (8 images: 61 img/s against 56 with
    one request after another, 38 with the batch in one dynamic-shape request; ResNet-18 int8, 2 cores).
    The streams are compiled at the first batch: a host that never batches pays for one compilation."""
    ov = import_runtime(OPENVINO)
    core = ov.Core()
    try:
        model = core.read_model(str(path))
        # OpenVINO drops ONNX's metadata_props; a QDQ graph reads in as FakeQuantize operations.
        precision = "int8" if any(op.get_type_name() == "FakeQuantize" for op in model.get_ops()) else "fp32"
        outputs = len(model.outputs)
        shape = model.input(0).get_partial_shape()
        model.reshape([1, *(dimension.get_length() for dimension in list(shape)[1:])])
        with keeping_signal_stack():
            request = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": max(1, threads),
                                                         "PERFORMANCE_HINT": "LATENCY"}).create_infer_request()
    except Exception as error:  # noqa: BLE001 - OpenVINO raises its own untyped errors
        raise EngineUnavailable(f"openvino refuses {path.name}: {error}") from None
    queues: list = []  # the streams' queue, once a batch has asked for it

    def each_output(done) -> list[np.ndarray]:
        return [done.get_output_tensor(index).data.copy() for index in range(outputs)]

    def run(images: np.ndarray) -> list[np.ndarray]:
        # The host calls a worker's model from one thread at a time, as these requests need.
        if threads <= 1 or len(images) == 1:
            answers = []
            for i in range(len(images)):
                request.infer({0: images[i:i + 1]})
                answers.append(each_output(request))
            return [np.concatenate(column) for column in zip(*answers)]
        if not queues:
            with keeping_signal_stack():
                streams = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                            "PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": threads})
            queues.append(ov.AsyncInferQueue(streams, threads))
        queue = queues[0]
        answers: list[list[np.ndarray] | None] = [None] * len(images)

        def keep(done, index: int) -> None:
            answers[index] = each_output(done)

        queue.set_callback(keep)
        for index in range(len(images)):
            queue.start_async({0: images[index:index + 1]}, index)
        queue.wait_all()
        return [np.concatenate(column) for column in zip(*answers)]

    return run, precision, outputs


def _onnxruntime(path: Path, threads: int) -> tuple[Run, str, int]:
    ort = import_runtime(ONNXRUNTIME)
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)  # the host sizes workers x threads to the cores
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own untyped errors
        raise EngineUnavailable(f"onnxruntime refuses {path.name}: {error}") from None
    precision = session.get_modelmeta().custom_metadata_map.get(PRECISION_KEY, "fp32")
    return (lambda images: session.run(None, {INPUT_NAME: images})), precision, len(session.get_outputs())


_LOADERS = {OPENVINO: _openvino, ONNXRUNTIME: _onnxruntime}


class OnnxClassifier:
    """An ONNX classifier as a callable from a float batch (N, 3, H, W) to logits (N, classes), or
    to (logits, summaries (N, EMBEDDING_DIMS)) when the model has the EMBEDDING_OUTPUT: the
    eager model's answer either way (training/embedding.py: EmbeddingClassifier).

    `engine` names what runs it, "<runtime>-<precision>", e.g. openvino-int8."""

    def __init__(self, path: Path, threads: int, runtimes: tuple[str, ...] = RUNTIMES):
        failures = []
        for runtime in runtimes:
            try:
                self._run, precision, outputs = _LOADERS[runtime](path, threads)
            except EngineUnavailable as error:
                failures.append(str(error))
                continue
            self.engine = f"{runtime}-{precision}"
            self.embeddings = outputs > 1
            return
        raise EngineUnavailable("; ".join(failures) or "no runtime asked for")

    def __call__(self, batch: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        images = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        outputs = [torch.from_numpy(np.asarray(output).copy()) for output in self._run(images)]
        return (outputs[0], outputs[1]) if self.embeddings else outputs[0]


def logits_of(output: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The logits of a classifier's answer, with or without its embedding summaries."""
    return output[0] if isinstance(output, tuple) else output
