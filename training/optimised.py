"""The optimised model the final job puts beside the state_dict, only when it agrees with it.

Candidates, all ONNX at a fixed opset, run by the runtime the endpoint will use (OpenVINO,
else ONNX Runtime: training/onnx_engine.py says why ONNX and why that order):

- int8: static int8, QDQ format (ONNX Runtime's quantizer), uint8 activations and per-channel
  int8 weights, calibrated on training images through the eval transform (what the endpoint sees);
- fp32: the same graph unquantized, for a model whose int8 copy disagrees.

Each candidate answers the job's test split; its top-1 agreement with the eager fp32 model and
its batch-1 latency are measured here, in the job. The fastest candidate that agrees on at
least `min_agreement` of the test images is chosen; none is, when none agrees, and the
artefact then holds the eager model alone. `choose` is the pure core of that decision.

Given the classifier with its embedding projection (training/embedding.py: EmbeddingClassifier),
every candidate has the summaries as a second output; agreement is measured on the logits.
"""

from __future__ import annotations

import copy
import logging
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from training.onnx_engine import INPUT_NAME, OPSET, OUTPUT_NAMES, PRECISION_KEY, OnnxClassifier, logits_of

logger = logging.getLogger(__name__)

INT8, FP32 = "int8", "fp32"  # the candidates' precisions
CALIBRATION_IMAGES = 64  # training images through the eval transform; more moved no range on ResNet-18
LATENCY_REPEATS = 10
EVAL_BATCH = 32


@dataclass(frozen=True)
class Measurement:
    """One candidate on the test split: top-1 agreement with eager fp32, batch-1 p50 latency.

    `engine` is "<runtime>-<precision>" as the endpoint will name it, e.g. openvino-int8."""

    engine: str
    agreement: float
    latency_ms: float


@dataclass(frozen=True)
class Outcome:
    """What the job decided: `chosen` is None when no candidate agreed (or none could be built)."""

    chosen: Measurement | None
    candidates: tuple[Measurement, ...]
    eager_latency_ms: float
    min_agreement: float
    path: Path | None = None  # the chosen candidate's file, in the job's scratch folder

    @property
    def reported(self) -> Measurement | None:
        """The figures the metric line carries: the chosen candidate's, else the closest to agreeing."""
        if self.chosen:
            return self.chosen
        return max(self.candidates, key=lambda m: m.agreement, default=None)

    def to_dict(self) -> dict:
        return {"engine": self.chosen.engine if self.chosen else None, "min_agreement": self.min_agreement,
                "eager_latency_ms": round(self.eager_latency_ms, 3),
                "candidates": [asdict(m) for m in self.candidates]}


def top1_agreement(reference: Sequence[int], candidate: Sequence[int]) -> float:
    """The fraction of images on which both models give the same top-1 class."""
    if len(reference) != len(candidate) or not reference:
        raise ValueError(f"agreement needs two equal, non-empty answer lists, not {len(reference)} and "
                         f"{len(candidate)}")
    return sum(a == b for a, b in zip(reference, candidate)) / len(reference)


def choose(measurements: Sequence[Measurement], min_agreement: float) -> Measurement | None:
    """The fastest candidate whose agreement reaches `min_agreement`; None when none does."""
    agreeing = [m for m in measurements if m.agreement >= min_agreement]
    return min(agreeing, key=lambda m: m.latency_ms, default=None)


# --- building and measuring the candidates ----------------------------------------------


Forward = Callable[[torch.Tensor], torch.Tensor | tuple[torch.Tensor, torch.Tensor]]  # logits[, summaries]


def export_fp32(model: nn.Module, path: Path, image_size: int) -> Path:
    """The eval-mode model as ONNX, batch dimension dynamic (the host batches requests). A model that
    answers (logits, summaries) (training/embedding.py) gets both outputs, in that order."""
    model = copy.deepcopy(model).cpu().float().eval().to(memory_format=torch.contiguous_format)
    example = torch.zeros(1, 3, image_size, image_size)
    with torch.inference_mode():
        answer = model(example)
    outputs = list(OUTPUT_NAMES[:len(answer) if isinstance(answer, tuple) else 1])
    # The TorchScript exporter: at a fixed opset its output is the same under torch 2.8 (the
    # training image) and here, and it needs neither onnxscript nor the dynamo stack.
    torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=OPSET,
                      input_names=[INPUT_NAME], output_names=outputs,
                      dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *outputs)})
    return path


def quantize_int8(fp32: Path, path: Path, calibration: Sequence[torch.Tensor]) -> Path:
    """Static int8 (QDQ, u8 activations, per-channel s8 weights), ranges from `calibration`."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Images(CalibrationDataReader):
        def __init__(self) -> None:
            self._images = iter(calibration)

        def get_next(self) -> dict | None:
            image = next(self._images, None)
            return None if image is None else {INPUT_NAME: image.unsqueeze(0).numpy()}

    prepared = path.with_suffix(".pre.onnx")
    # Folds and infers shapes first, as onnxruntime's quantization guide asks; quantizing without it
    # leaves some convolutions in float.
    quant_pre_process(str(fp32), str(prepared))
    # u8 activations: s8 x s8 has no fast kernel on AVX2 without VNNI (measured 2x slower).
    quantize_static(str(prepared), str(path), Images(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
    prepared.unlink(missing_ok=True)
    return path


def label(path: Path, precision: str) -> Path:
    """Write the precision into the file (metadata_props), so the endpoint can say what it serves."""
    import onnx

    model = onnx.load(str(path))
    entry = next((p for p in model.metadata_props if p.key == PRECISION_KEY), None) or model.metadata_props.add()
    entry.key, entry.value = PRECISION_KEY, precision
    onnx.save(model, str(path))
    return path


def top1(forward: Forward, images: Sequence[torch.Tensor]) -> list[int]:
    answers: list[int] = []
    for start in range(0, len(images), EVAL_BATCH):
        with torch.inference_mode():
            answers += logits_of(forward(torch.stack(list(images[start:start + EVAL_BATCH])))).argmax(dim=1).tolist()
    return answers


def latency_ms(forward: Forward, image: torch.Tensor, repeats: int = LATENCY_REPEATS) -> float:
    """Batch-1 p50 forward latency, after a warm-up (allocators, kernel selection)."""
    batch = image.unsqueeze(0)
    times = []
    with torch.inference_mode():
        for index in range(repeats + 2):
            began = time.perf_counter()
            forward(batch)
            if index >= 2:
                times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


def build_optimised(model: nn.Module, calibration: Sequence[torch.Tensor], test: Sequence[torch.Tensor],
                    scratch: Path, *, min_agreement: float, threads: int | None = None,
                    candidates: Sequence[str] = (INT8, FP32)) -> Outcome:
    """Build each candidate in `scratch`, measure it against the eager model, and choose.

    `model` is the trained eager fp32 model (or its EmbeddingClassifier: the candidates then carry
    the summaries too, and agreement is still measured on the logits); `calibration` and `test`
    are eval-transformed images (3, S, S) of the training and test splits. Never raises for a candidate that
    cannot be built or run: that candidate is left out, and the job goes on.
    """
    if not test:
        raise ValueError("the optimised model is judged on the test split, which is empty")
    threads = threads or torch.get_num_threads()
    eager = copy.deepcopy(model).cpu().float().eval()
    reference = top1(eager, test)
    eager_latency = latency_ms(eager, test[0])
    image_size = test[0].shape[-1]
    measured: list[Measurement] = []
    files: dict[str, Path] = {}  # by engine
    try:
        fp32 = export_fp32(eager, scratch / "fp32.onnx", image_size)
    except Exception as error:  # noqa: BLE001 - an export the exporter refuses leaves the eager model alone
        logger.warning("onnx export failed", extra={"error": str(error)})
        return Outcome(None, (), eager_latency, min_agreement)
    for precision in candidates:
        try:
            path = label(fp32 if precision == FP32 else quantize_int8(fp32, scratch / "int8.onnx", calibration),
                         precision)
            forward = OnnxClassifier(path, threads)
            files[forward.engine] = path
            measured.append(Measurement(forward.engine, top1_agreement(reference, top1(forward, test)),
                                        latency_ms(forward, test[0])))
        except Exception as error:  # noqa: BLE001 - see the docstring (EngineUnavailable, onnx's own errors)
            logger.warning("optimised candidate failed", extra={"precision": precision, "error": str(error)})
    chosen = choose(measured, min_agreement)
    outcome = Outcome(chosen, tuple(measured), eager_latency, min_agreement, files[chosen.engine] if chosen else None)
    logger.info("optimised model", extra=outcome.to_dict())
    return outcome


def optimise_in_job(model: nn.Module, calibration: Sequence[torch.Tensor], test: Sequence[torch.Tensor],
                    model_dir: Path, *, min_agreement: float, print_line: Callable[[str], None],
                    candidates: Sequence[str] = (INT8, FP32)) -> Outcome:
    """The job's step: build, decide, print the metric line, and put the chosen file in `model_dir`."""
    from training import metrics
    from training.onnx_engine import OPTIMISED_MODEL

    with tempfile.TemporaryDirectory(prefix="optimised-") as scratch:
        outcome = build_optimised(model, calibration, test, Path(scratch), min_agreement=min_agreement,
                                  candidates=candidates)
        if outcome.reported:
            print_line(metrics.optimised_line(outcome.reported.agreement, outcome.reported.latency_ms,
                                              outcome.eager_latency_ms))
        target = model_dir / OPTIMISED_MODEL
        target.unlink(missing_ok=True)
        if outcome.path is not None:
            model_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(outcome.path, target)
        else:
            logger.warning("no optimised model in the artefact", extra=outcome.to_dict())
    return outcome
