"""What the embedding summaries cost the endpoint: predict latency with and without them.

    python bench/embedding_cost.py [--repeats 30] [--threads 2]

A random-init ResNet-18 (1000 classes, 224-pixel crops of decoded 224-pixel JPEGs) served by the
handler's own functions (predict_fn + output_fn; decoding is the same either way and left out), on
both engines: eager PyTorch and the optimised model (int8 ONNX, built as the final job builds it,
calibrated on the benchmark's images). Each engine is measured three ways, batch 1 and batch 8:

- no_projection: an artefact without embedding.pt (the model as it was before);
- not_asked: with the projection (the summaries are computed in the same pass), not asked for;
- asked: with the projection, asked for (`embeddings=1`): the summaries are in the answer.

Rounds of the variants alternate (each round runs every variant once), so a machine whose speed
drifts moves them alike. Prints JSON: p50 milliseconds per engine, batch and variant.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from serve_latency import make_jpeg  # bench/ is on sys.path; serve_latency puts the repository there too

from inference import inference as handler
from training import artifact
from training.embedding import EMBEDDING_FILE, EmbeddingClassifier, Projection, split_penultimate
from training.model import ModelSpec, build_model
from training.onnx_engine import OPTIMISED_MODEL
from training.optimised import INT8, optimise_in_job
from training.presets import ClassificationPresetEval, decode_rgb

ASK = {handler.CUSTOM_ATTRIBUTES_HEADER: "embeddings=1"}


def artefacts(work: Path, images: list[torch.Tensor]) -> dict[str, Path]:
    """Model dirs: eager and optimised, each without and with the projection."""
    torch.manual_seed(0)
    spec = ModelSpec("resnet18", 1000)
    model = build_model(spec).eval()
    preset = ClassificationPresetEval()
    batch = [preset(image) for image in images]
    with torch.inference_mode():
        projection = Projection.fit(split_penultimate(model)[0](torch.stack(batch)))
    weights, classes = _state_dict_bytes(model), [f"class-{i}" for i in range(spec.num_classes)]
    dirs = {}
    for name in ("eager", "eager+projection", "optimised", "optimised+projection"):
        model_dir = work / name.replace("+", "-")
        artifact.write_model_dir(model_dir, state_dict_bytes=weights, classes=classes, spec=spec.to_dict(),
                                 preprocessing=preset.to_dict(), metadata={"version": name})
        with_projection = name.endswith("+projection")
        if with_projection:
            projection.save(model_dir / EMBEDDING_FILE)
        if name.startswith("optimised"):
            exported = EmbeddingClassifier(model, projection) if with_projection else model
            outcome = optimise_in_job(exported, batch, batch, model_dir, min_agreement=0.0, candidates=(INT8,),
                                      print_line=lambda line: None)
            assert (model_dir / OPTIMISED_MODEL).exists(), outcome.to_dict()
        dirs[name] = model_dir
    return dirs


def _state_dict_bytes(model: torch.nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


def measure(dirs: dict[str, Path], images: list[torch.Tensor], repeats: int) -> dict:
    models = {name: handler.model_fn(model_dir) for name, model_dir in dirs.items()}
    variants = {}  # (engine, batch, variant) -> (model, request)
    for engine in ("eager", "optimised"):
        for size in (1, 8):
            chosen = images[:size]
            variants[(engine, size, "no_projection")] = (models[engine], handler.InferenceRequest(chosen))
            variants[(engine, size, "not_asked")] = (models[f"{engine}+projection"], handler.InferenceRequest(chosen))
            variants[(engine, size, "asked")] = (models[f"{engine}+projection"],
                                                 handler.InferenceRequest(chosen, embeddings=True))
    times: dict[tuple, list[float]] = {key: [] for key in variants}
    for round_ in range(repeats + 2):  # two warm-up rounds
        for key, (model, request) in variants.items():
            began = time.perf_counter()
            payload, _ = handler.output_fn(handler.predict_fn(request, model), "application/json")
            elapsed = time.perf_counter() - began
            assert ("embeddings" in json.loads(payload)) == (key[2] == "asked")
            if round_ >= 2:
                times[key].append(elapsed)
    result: dict = {"engines": {engine: models[engine].engine for engine in ("eager", "optimised")},
                    "threads": torch.get_num_threads(), "repeats": repeats}
    for (engine, size, variant), seconds in times.items():
        result.setdefault(engine, {}).setdefault(f"batch{size}_p50_ms", {})[variant] = round(
            statistics.median(seconds) * 1000, 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images = [decode_rgb(make_jpeg(seed)) for seed in range(8)]
    with tempfile.TemporaryDirectory(prefix="embedding-cost-") as work:
        print(json.dumps(measure(artefacts(Path(work), images), images, args.repeats), indent=2))


if __name__ == "__main__":
    sys.exit(main())
