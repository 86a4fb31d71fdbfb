"""Training-loop throughput against the model's own forward+backward ceiling; cached features.

    python bench/train_throughput.py [--arch resnet18] [--image-size 64] [--epochs 2]

Prints JSON:
- `loop_images_per_s`: the real training loop (train.train_one_epoch, profiler on) over the
  digits, decoded and augmented by the project's data pipeline;
- `ceiling_images_per_s`: the same model, optimizer and batch size, forward+backward+step on
  synthetic tensors already in memory (no data pipeline at all);
- `pipeline_efficiency` = loop / ceiling (goal >= 0.9);
- `cached_features`: with a frozen backbone, epochs over cached trunk features against
  recomputing the trunk every epoch (the seed projects' way), both for `--epochs` epochs,
  the one-time caching pass included in the cached side.
Ratios are measured side by side in one run: absolute times drift between machines.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from torch import nn

from training import data, train
from training.debugger import DebugSession
from training.demo_data import write_digits
from training.model import FrozenTrunk, ModelSpec, build_model, split_frozen
from training.presets import ClassificationPresetEval, ClassificationPresetTrain
from training.profiler import Profiler


def digits_splits(root: Path, image_size: int, batch_size: int) -> tuple[dict[str, data.ImageDataset], list[str]]:
    write_digits(root, "splits")
    decoded = data.decode_all(data.discover({"training": root}))
    classes = sorted({s.label for s in decoded.samples})
    train_preset = ClassificationPresetTrain(crop_size=image_size, hflip_prob=0.0)
    eval_preset = ClassificationPresetEval.for_image_size(image_size)
    datasets = {
        "train": data.ImageDataset([s for s in decoded.samples if s.split == "train"], classes, train_preset, decoded.pixels),
        "train_eval": data.ImageDataset([s for s in decoded.samples if s.split == "train"], classes, eval_preset, decoded.pixels),
    }
    return datasets, classes


def timed_epochs(network: nn.Module, split_loader: train.SplitLoader, params, epochs: int, profiler_dir: Path) -> float:
    optimizer = torch.optim.AdamW([p for p in params if p.requires_grad], lr=1e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    profiler = Profiler(profiler_dir).start()
    started = time.perf_counter()
    for _ in range(epochs):
        train.train_one_epoch(network, split_loader, nn.CrossEntropyLoss(), optimizer, scheduler, torch.device("cpu"),
                              False, profiler, DebugSession())
    elapsed = time.perf_counter() - started
    profiler.stop()
    return elapsed


def ceiling(model: nn.Module, batch_size: int, image_size: int, num_classes: int, steps: int) -> float:
    """Forward+backward+step on tensors already in memory: what the loop could reach."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss()
    images = torch.randn(batch_size, 3, image_size, image_size)
    targets = torch.randint(0, num_classes, (batch_size,))
    model.train()
    for step in range(steps + 2):
        if step == 2:
            started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        criterion(model(images), targets).backward()
        optimizer.step()
    return steps * batch_size / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        datasets, classes = digits_splits(tmp_path / "digits", args.image_size, args.batch_size)
        spec = ModelSpec(args.arch, len(classes))
        n_train = len(datasets["train"])

        # 1. The real loop vs the ceiling, same model and batch size.
        model = build_model(spec)
        train_split = train.SplitLoader(train.make_loader(datasets["train"], args.batch_size, True, 0, False, 0), n_train)
        loop_s = timed_epochs(model, train_split, model.parameters(), args.epochs, tmp_path / "p1")
        loop_ips = args.epochs * n_train / loop_s
        ceiling_ips = ceiling(build_model(spec), args.batch_size, args.image_size, len(classes),
                              steps=max(5, n_train // args.batch_size))

        # 2. Frozen backbone: cached features vs recomputing the trunk every epoch.
        model = build_model(spec)
        trunk, tail = split_frozen(model, "backbone")
        eval_loader = train.make_loader(datasets["train_eval"], args.batch_size, False, 0, False, 0)
        recompute_s = timed_epochs(FrozenTrunk(trunk, tail), train.SplitLoader(eval_loader, n_train), tail.parameters(),
                                   args.epochs, tmp_path / "p2")
        started = time.perf_counter()
        features = train.compute_features(trunk, eval_loader, torch.device("cpu"), False)
        caching_s = time.perf_counter() - started
        cached_split = train.SplitLoader(train.make_loader(features, args.batch_size, True, 0, False, 0), n_train)
        cached_s = caching_s + timed_epochs(tail, cached_split, tail.parameters(), args.epochs, tmp_path / "p3")

    print(json.dumps({
        "arch": args.arch,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "train_images": n_train,
        "torch_threads": torch.get_num_threads(),
        "loop_images_per_s": round(loop_ips, 1),
        "ceiling_images_per_s": round(ceiling_ips, 1),
        "pipeline_efficiency": round(loop_ips / ceiling_ips, 3),
        "pipeline_efficiency_goal": 0.9,
        "cached_features": {
            "recompute_each_epoch_s": round(recompute_s, 2),
            "cache_once_s": round(caching_s, 2),
            "cached_total_s": round(cached_s, 2),
            "speedup": round(recompute_s / cached_s, 2),
        },
    }, indent=2))


if __name__ == "__main__":
    main()
