"""Fine-tune a torchvision ResNet under SageMaker's script-mode contract.

    python -m training.train --epochs 10 --lr 0.001 ...      (locally)
    python training/train.py --epochs 10 ...                (as SageMaker runs sagemaker_program)

Channels come from SM_CHANNEL_<NAME>, the model goes to SM_MODEL_DIR, extra outputs
(profiler figures, the HTML report, Debugger tensors when asked for locally) to
SM_OUTPUT_DATA_DIR. Without SageMaker's environment, `--data-dir`, `--model-dir` and
`--output-dir` stand in. Each epoch prints one metric line, and the end the test line,
in the format of training/metrics.py, which the tuning job's regexes read.
"""

from __future__ import annotations

import argparse
import copy
import gc
import io
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script, the way SageMaker runs `training/train.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from training import artifact, checkpoints, data, embedding, feature_cache, metrics
from training import optimised as optimised_model
from training.debugger import DebugSession
from training.live_model import LiveModelError, live_test_accuracy
from training.logs import get_logger
from training.model import ARCHS, FREEZE_MODES, FrozenTrunk, ModelSpec, build_model, split_frozen
from training.pretrained import PretrainedWeightsError, load_pretrained, weights_identity
from training.presets import ClassificationPresetEval, ClassificationPresetTrain
from training.profiler import Profiler

logger = get_logger()

DEBUGGER_VERDICTS = "debugger-rules.json"  # in SM_OUTPUT_DATA_DIR: verdict, finding and parameters per rule
FEATURE_BATCH_SIZE = 64  # images per forward pass of a frozen trunk (see main)


@dataclass(frozen=True)
class SageMakerEnv:
    """What SageMaker's environment tells a training script."""

    channels: dict[str, Path]
    model_dir: Path
    output_dir: Path
    num_gpus: int
    job_name: str
    checkpoint_dir: Path | None = None  # None: the job keeps no checkpoints (see training/checkpoints.py)

    @classmethod
    def from_environ(cls, args: argparse.Namespace) -> "SageMakerEnv":
        env = os.environ
        channels = {
            key[len("SM_CHANNEL_"):].lower(): Path(value)
            for key, value in env.items()
            if key.startswith("SM_CHANNEL_")
        }
        if args.data_dir:
            channels.setdefault("training", args.data_dir)
        if args.weights_dir:
            channels.setdefault("weights", args.weights_dir)
        return cls(
            channels=channels,
            model_dir=Path(env.get("SM_MODEL_DIR") or args.model_dir),
            output_dir=Path(env.get("SM_OUTPUT_DATA_DIR") or args.output_dir),
            num_gpus=int(env.get("SM_NUM_GPUS", torch.cuda.device_count())),
            job_name=env.get("TRAINING_JOB_NAME") or f"local-{time.strftime('%Y%m%d-%H%M%S')}",
            checkpoint_dir=checkpoints.checkpoint_dir(args.checkpoint_dir),
        )


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Fine-tune a ResNet image classifier (SageMaker script mode)")
    add = parser.add_argument
    add("--arch", default="resnet18", choices=ARCHS)
    add("--pretrained", default="imagenet", help="imagenet | none | PATH to a state_dict (.pth) or model dir")
    add("--freeze", default="none", choices=FREEZE_MODES, help="how much of the backbone stays frozen")
    add("--hidden-units", type=int, default=0, help="hidden layer of the head; 0 for a single linear layer")
    add("--dropout", type=float, default=0.0)
    add("--optimizer", default="adamw", choices=("sgd", "adam", "adamw"))
    add("--lr", type=float, default=1e-3)
    add("--momentum", type=float, default=0.9, help="sgd only")
    add("--weight-decay", type=float, default=1e-4)
    add("--batch-size", type=int, default=64)
    add("--epochs", type=int, default=10)
    add("--patience", type=int, default=0, help="stop after this many epochs without a better valid loss; 0 = never")
    add("--image-size", type=int, default=224, help="side of the square crop the network sees")
    add("--hflip-prob", type=float, default=0.5, help="0 for data where mirroring changes the class (digits)")
    add("--min-scale", type=float, default=0.5, help="smallest area fraction of the random resized crop")
    add("--cache-features", default="auto", choices=("auto", "off"),
        help="auto: with a frozen trunk, compute its features once per run and reuse them every epoch")
    add("--feature-cache", default="", help="share the frozen trunk's features between jobs (the trials of a "
        "tuning job): s3://bucket/prefix/ or a directory; default: a managed warm pool's cache when the job has one")
    add("--report", default="on", choices=("on", "off"),
        help="write the HTML report (curves, confusion matrix, profiler findings); off for tuning trials")
    add("--workers", type=int, default=None, help="DataLoader worker processes (default: 0 when the decoded "
        "images fit in memory, else up to 8)")
    add("--optimise", default="on", choices=("on", "off"),
        help="on: put an optimised model (ONNX, int8 or fp32) beside the state_dict when it agrees with it; "
        "off for tuning trials")
    add("--drift-reference", default="on", choices=("on", "off"),
        help="on: describe the test split as the model sees it (confidences, classes, embedding summaries) "
        "for drift detection, and let the endpoint return embedding summaries; off for tuning trials")
    add("--optimised-min-agreement", type=float, default=metrics.DEFAULT_MIN_AGREEMENT,
        help="top-1 agreement with the eager model on the test split the optimised model needs to be included")
    add("--seed", type=int, default=0)
    add("--data-prefix", default="training-data/", help="S3 prefix of the manifest's keys inside the training channel")
    add("--min-images-per-class", type=int, default=5)
    add("--debug-out", type=Path, default=None, help="local run: write smdebug tensors here")
    add("--debugger-rules", type=rule_names, default=(), help="Debugger rules to evaluate in the job after its last "
        f"epoch, comma-separated (of {', '.join(metrics.DEBUGGER_RULES)}): each verdict is a metric line")
    add("--debugger-rule-parameters", type=rule_parameters, default={}, metavar="Rule.key=value,...",
        help="their parameters (a DebugRuleConfiguration's RuleParameters), e.g. Overfit.patience=3")
    add("--debug-save-interval", type=int, default=100,
        help="without SageMaker's hook config: save weights and gradients every N training steps (losses every 10)")
    # Local stand-ins for SageMaker's environment.
    add("--data-dir", type=Path, default=None, help="local run: the 'training' channel")
    add("--weights-dir", type=Path, default=None, help="local run: the 'weights' channel")
    add("--model-dir", type=Path, default=Path("out/model"))
    add("--output-dir", type=Path, default=Path("out/output"))
    add("--checkpoint-dir", type=Path, default=None, help="save a checkpoint after each epoch here and resume from "
        "the newest; default: SageMaker's checkpoint directory when the job has one (spot training), else none")
    return parser


def rule_names(value: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in value.split(",") if name.strip())
    unknown = sorted(set(names) - set(metrics.DEBUGGER_RULES))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown Debugger rules {unknown}; known: {', '.join(metrics.DEBUGGER_RULES)}")
    return names


def rule_parameters(value: str) -> dict[str, dict[str, str]]:
    try:
        return metrics.parse_rule_parameters(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    # SageMaker passes its own hyperparameters (sagemaker_program, ...) too: ignore them;
    args, unknown = get_args_parser().parse_known_args(argv)
    # _tuning_objective_metric is what a tuning job adds to its trials.
    ignored = [a for a in unknown if a.startswith(("--sagemaker_", "--sagemaker-", "--_"))]
    rest = [a for a in unknown if a.startswith("--") and a not in ignored]
    if rest:
        get_args_parser().error(f"unknown hyperparameters: {' '.join(rest)}")
    return args


@dataclass
class SplitLoader:
    """One split, ready to iterate: images through transforms, or cached trunk features."""

    loader: DataLoader
    size: int


@dataclass
class EpochResult:
    loss: float
    accuracy: float
    predictions: list[int] = field(default_factory=list)
    targets: list[int] = field(default_factory=list)


def make_loader(dataset, batch_size: int, shuffle: bool, workers: int, pin: bool, seed: int,
                persistent: bool = True) -> DataLoader:
    """`persistent=False`: worker processes start afresh each epoch, seeded from the loader's generator
    (the main process's when it has none), so a run resumed from a checkpoint draws what it would have."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        # Training drops a short last batch: it costs nearly a full step and gives BatchNorm
        # noisy statistics; reshuffling still shows every image across epochs.
        drop_last=shuffle and len(dataset) > batch_size,
        num_workers=workers,
        pin_memory=pin,
        persistent_workers=persistent and workers > 0,
        generator=torch.Generator().manual_seed(seed) if shuffle else None,
    )


@torch.inference_mode()
def compute_features(trunk: nn.Module, loader: DataLoader, device: torch.device, amp: bool) -> TensorDataset:
    """Run the frozen trunk once over a split; its output is a pure function of the image.

    Channels-last on every device: oneDNN runs this inference 1.7x faster on CPU in that
    layout (ResNet-18, 32 px; training on CPU was not faster, so the rest stays as it is).
    """
    trunk.to(memory_format=torch.channels_last)
    features, targets = [], []
    for images, labels in loader:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = trunk(images.to(device, non_blocking=True, memory_format=torch.channels_last))
        features.append(out.float().cpu())
        targets.append(labels)
    return TensorDataset(torch.cat(features), torch.cat(targets))


def make_optimizer(args: argparse.Namespace, params) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if args.optimizer == "sgd":
        return torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    if args.optimizer == "adam":
        return torch.optim.Adam(params, lr=args.lr, weight_decay=args.weight_decay)
    return torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)


def train_one_epoch(network: nn.Module, split_loader: SplitLoader, criterion, optimizer, scheduler, device, amp: bool,
                    profiler: Profiler, debug: DebugSession) -> float:
    network.train()
    debug.train()
    total_loss, seen = 0.0, 0
    for images, targets in profiler.iterate(split_loader.loader, phase="train"):
        with profiler.compute(len(targets)):
            images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = criterion(network(images), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(targets)
            seen += len(targets)
    scheduler.step()
    return total_loss / seen


@torch.inference_mode()
def evaluate(network: nn.Module, split_loader: SplitLoader, criterion, device, amp: bool) -> EpochResult:
    network.eval()
    total_loss, result = 0.0, EpochResult(0.0, 0.0)
    for images, targets in split_loader.loader:
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = network(images)
        total_loss += criterion(logits.float(), targets).item() * len(targets)
        result.predictions += logits.argmax(1).tolist()
        result.targets += targets.tolist()
    correct = sum(p == t for p, t in zip(result.predictions, result.targets))
    result.loss, result.accuracy = total_loss / split_loader.size, correct / split_loader.size
    return result


def confusion_matrix(result: EpochResult, num_classes: int) -> list[list[int]]:
    matrix = [[0] * num_classes for _ in range(num_classes)]
    for target, prediction in zip(result.targets, result.predictions):
        matrix[target][prediction] += 1
    return matrix


def main(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    env = SageMakerEnv.from_environ(args)
    device = torch.device("cuda" if env.num_gpus > 0 and torch.cuda.is_available() else "cpu")
    amp = device.type == "cuda"  # bf16 autocast: no loss scaling needed
    logger.info("starting", extra={"job": env.job_name, "device": str(device), "hyperparameters": vars(args) | {
        k: str(v) for k, v in vars(args).items() if isinstance(v, Path)}})

    # Data: find, check (corrupt images are skipped and counted), refuse what cannot train.
    # A frozen trunk's features may come from another job (the trials of a tuning job share them):
    # then no image needs decoding at all.
    discovered = data.discover(env.channels, args.data_prefix)
    cache = args.freeze != "none" and args.cache_features == "auto"
    shared = shared_features(args, env, amp, discovered) if cache else None
    entry = feature_cache.load(*shared) if shared else None
    accepted = entry.partition(discovered) if entry else None
    if accepted:
        (samples, rejected), pixels = accepted, None
        data.warn_rejected(rejected)
    else:
        if entry:
            logger.warning("feature cache entry does not fit these samples, computing it again")
        entry = None
        decoded = data.decode_all(discovered, workers=min(2, args.workers or 0))
        samples, rejected, pixels = decoded.samples, decoded.rejected, decoded.pixels
    summary = data.summarise(samples, rejected, args.min_images_per_class)
    # Pixels in memory leave the loader only the transforms: worker processes would cost more than they save.
    workers = 0 if pixels is not None else (args.workers if args.workers is not None else min(8, os.cpu_count() or 1))
    classes = summary.classes
    logger.info("data", extra={"classes": len(classes), "images": {s: sum(c.values()) for s, c in summary.counts.items()},
                               "rejected": len(rejected)})

    # Model: a ResNet with a new head; a frozen trunk is run once and cached when it can be.
    spec = ModelSpec(args.arch, len(classes), args.hidden_units, args.dropout)
    # Seeded right here: a random-init trunk then depends on the seed alone (cached features are named by it).
    torch.manual_seed(args.seed)
    model = build_model(spec)
    weights_source = load_pretrained(model, args.pretrained, args.arch, env.channels.get("weights"))
    trunk, tail = split_frozen(model, args.freeze)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)

    eval_preset = ClassificationPresetEval.for_image_size(args.image_size)
    train_preset = ClassificationPresetTrain(crop_size=args.image_size, hflip_prob=args.hflip_prob, min_scale=args.min_scale)
    pin = device.type == "cuda"
    by_split = {split: [s for s in samples if s.split == split] for split in ("train", "valid", "test")}

    def image_split(split: str, transform, shuffle: bool, batch_size: int = args.batch_size) -> SplitLoader:
        dataset = data.ImageDataset(by_split[split], classes, transform, pixels)
        return SplitLoader(make_loader(dataset, batch_size, shuffle, workers, pin, args.seed,
                                 persistent=env.checkpoint_dir is None), len(dataset))

    if cache:
        # The cached features come from the eval transform: augmentation would defeat the cache.
        if entry is None:
            t0 = time.perf_counter()
            # A fixed batch size: batched kernels round differently per batch size, and trials that
            # tune the batch size share these features.
            computed = {split: compute_features(trunk, image_split(split, eval_preset, False, FEATURE_BATCH_SIZE).loader,
                                                device, amp)
                        for split in feature_cache.SPLITS}
            index = {str(sample.path): i for i, sample in enumerate(discovered)}
            entry = feature_cache.Entry(
                features={split: dataset.tensors[0] for split, dataset in computed.items()},
                targets={split: dataset.tensors[1] for split, dataset in computed.items()},
                rejected={index[path]: reason for path, reason in rejected})
            logger.info("cached frozen-trunk features", extra={"seconds": round(time.perf_counter() - t0, 2)})
            if shared:
                feature_cache.save(*shared, entry)
        split_loaders = {split: SplitLoader(make_loader(TensorDataset(entry.features[split], entry.targets[split]),
                                                        args.batch_size, split == "train", 0, False, args.seed),
                                            len(entry.targets[split]))
                         for split in feature_cache.SPLITS}
        network: nn.Module = tail
    else:
        split_loaders = {
            "train": image_split("train", train_preset, True),
            "valid": image_split("valid", eval_preset, False),
            "test": image_split("test", eval_preset, False),
        }
        network = model if trunk is None else FrozenTrunk(trunk, tail)

    criterion = nn.CrossEntropyLoss()
    optimizer = make_optimizer(args, tail.parameters())
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, args.epochs))
    # Rules evaluated in the job need its tensors: a scratch folder beside the output when none was asked for.
    debug_out = args.debug_out or (env.output_dir.parent / "tensors" if args.debugger_rules else None)
    debug = DebugSession.create(out_dir=debug_out, save_interval=args.debug_save_interval,
                                modules=tail, loss=criterion)
    profiler = Profiler(env.output_dir / "profiler")
    profiler.start()

    # Train; keep the weights of the epoch with the best validation loss (the tail's: a frozen trunk never changes).
    history: list[dict] = []
    best = {"loss": math.inf, "state": copy.deepcopy(tail.state_dict()), "epoch": 0}
    # A job restarted after an interruption (spot training) goes on after its last saved epoch, all state restored.
    checkpointer = None if env.checkpoint_dir is None else checkpoints.Checkpointer(
        env.checkpoint_dir, checkpoints.fingerprint(args, classes), tail, optimizer, scheduler,
        split_loaders["train"].loader.generator)
    resumed = checkpointer.resume() if checkpointer else None
    if resumed:
        history, best = resumed.history, resumed.best
    for epoch in range(resumed.epoch + 1 if resumed else 1, args.epochs + 1):
        train_loss = train_one_epoch(network, split_loaders["train"], criterion, optimizer, scheduler, device, amp, profiler, debug)
        debug.eval()
        valid = evaluate(network, split_loaders["valid"], criterion, device, amp)
        print(metrics.epoch_line(epoch, train_loss, valid.loss, valid.accuracy), flush=True)
        history.append({"epoch": epoch, "train_loss": train_loss, "valid_loss": valid.loss, "valid_accuracy": valid.accuracy})
        if valid.loss < best["loss"]:
            best = {"loss": valid.loss, "state": copy.deepcopy(tail.state_dict()), "epoch": epoch}
        elif args.patience and epoch - best["epoch"] >= args.patience:
            logger.info("early stop", extra={"epoch": epoch, "best_epoch": best["epoch"]})
            break
        if checkpointer:  # not after an early stop: a resumed job replays that epoch, identically, and stops too
            checkpointer.save(epoch, history, best)
    profile = profiler.stop()
    print(profile.line(), flush=True)  # the job's log (CloudWatch on AWS) keeps where the time went
    debug.close()

    tail.load_state_dict(best["state"])
    test = evaluate(network, split_loaders["test"], criterion, device, amp)
    print(metrics.test_line(test.loss, test.accuracy), flush=True)
    live_accuracy = score_live_model(env.channels.get("live"), by_split["test"], pixels)
    # What the test split looks like to this model, for drift detection (training/drift.py); a frozen
    # trunk's test loader holds features, so the images go through the eval transform again.
    described = None
    if args.drift_reference == "on":
        test_images = split_loaders["test"] if not cache else image_split("test", eval_preset, False)
        described = embedding.describe(model, (images for images, _ in test_images.loader), classes, device)
    optimised = optimise(args, model, described.projection if described else None, by_split, classes, eval_preset,
                         pixels, env.model_dir)
    rule_results = evaluate_debugger_rules(debug.out_dir, args.debugger_rules, args.debugger_rule_parameters)
    rule_verdicts = {rule: result["verdict"] for rule, result in rule_results.items()}
    seconds = time.perf_counter() - started

    # The artefact: weights, classes, the exact eval preprocessing, and the serving code.
    buffer = io.BytesIO()
    # In the default layout: the same bytes whichever layout the run computed in (channels-last
    # trunks); `.contiguous()` would keep a 1x1 convolution's channels-last strides.
    torch.save({k: v.cpu().clone(memory_format=torch.contiguous_format) for k, v in model.state_dict().items()}, buffer)
    test_metrics = {"test_loss": test.loss, "test_accuracy": test.accuracy}
    if live_accuracy is not None:
        test_metrics["live_test_accuracy"] = live_accuracy
    metadata = {
        "version": env.job_name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "hyperparameters": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "weights_source": weights_source,
        "best_epoch": best["epoch"],
        "history": history,
        "metrics": test_metrics,
        "data": {"counts": summary.counts, "rejected": len(rejected)},
        "debugger_rules": rule_verdicts,
        "optimised": optimised.to_dict() if optimised else None,
        "seconds": round(seconds, 1),
    }
    artifact.write_model_dir(env.model_dir, state_dict_bytes=buffer.getvalue(), classes=classes,
                             spec=spec.to_dict(), preprocessing=eval_preset.to_dict(), metadata=metadata,
                             drift_reference=described.reference.to_dict() if described else None)
    if described:
        described.projection.save(env.model_dir / embedding.EMBEDDING_FILE)
    confusion = confusion_matrix(test, len(classes))
    env.output_dir.mkdir(parents=True, exist_ok=True)
    (env.output_dir / "metrics.json").write_text(json.dumps({**metadata, "classes": classes, "confusion_matrix": confusion},
                                                                 indent=2))
    if rule_results:
        (env.output_dir / DEBUGGER_VERDICTS).write_text(json.dumps(rule_results, indent=2))
    report = None
    if args.report == "on":
        from training.report import write_report  # matplotlib: imported only by a job that draws

        report = write_report(env.output_dir / "report", history=history, test=test_metrics, confusion=confusion,
                              classes=classes, profile=profile, rule_verdicts=rule_verdicts,
                              hyperparameters=metadata["hyperparameters"], optimised=metadata["optimised"])
    logger.info("done", extra={"seconds": round(seconds, 1), "test_accuracy": test.accuracy,
                               "model_dir": str(env.model_dir), "report": str(report) if report else None})
    return metadata


def shared_features(args: argparse.Namespace, env: SageMakerEnv, amp: bool,
                    discovered: list[data.Sample]) -> tuple[feature_cache.Store, str] | None:
    """Where this run's frozen-trunk features are shared, and their entry's name; None when not shared."""
    try:
        store = feature_cache.open_store(args.feature_cache)
    except Exception as error:  # noqa: BLE001 - without its cache, a job still trains
        logger.warning("feature cache unavailable", extra={"uri": args.feature_cache, "error": str(error)})
        return None
    if store is None:
        return None
    weights = weights_identity(args.pretrained, args.arch, env.channels.get("weights"), args.seed)
    trunk = feature_cache.Trunk(args.arch, args.freeze, weights, args.image_size, "cuda-bf16" if amp else "cpu")
    return store, feature_cache.entry_name(trunk, discovered)


def optimise(args: argparse.Namespace, model: nn.Module, projection: embedding.Projection | None,
             by_split: dict[str, list[data.Sample]], classes: list[str], eval_preset: ClassificationPresetEval,
             pixels: dict[Path, torch.Tensor] | None, model_dir: Path) -> optimised_model.Outcome | None:
    """The optimised model beside the state_dict (training/optimised.py), judged on the test split
    and calibrated on the first training images, both through the eval transform the endpoint uses.
    With a projection, it answers the embedding summaries too (its second output)."""
    if args.optimise == "off":
        return None

    def images(split: str, limit: int | None = None) -> list[torch.Tensor]:
        dataset = data.ImageDataset(by_split[split][:limit], classes, eval_preset, pixels)
        return [dataset[i][0] for i in range(len(dataset))]

    exported = embedding.EmbeddingClassifier(model, projection) if projection is not None else model
    return optimised_model.optimise_in_job(
        exported, images("train", optimised_model.CALIBRATION_IMAGES), images("test"), model_dir,
        min_agreement=args.optimised_min_agreement, print_line=lambda line: print(line, flush=True))


def evaluate_debugger_rules(tensors: Path | None, rules: tuple[str, ...],
                            parameters: dict[str, dict[str, str]]) -> dict[str, dict]:
    """The Debugger rules, evaluated here on this job's own tensors (the managed service that ran
    them in containers of its own is closed to new accounts): one metric line per verdict, read
    by the quality gate from FinalMetricDataList."""
    if not rules:
        return {}
    from training.rules import judge_rules  # smdebug's trial reader: only in a job that evaluates rules

    results = judge_rules(tensors, rules, parameters)
    for rule, result in results.items():
        print(metrics.rule_line(rule, result["verdict"]), flush=True)
    return results


def score_live_model(channel: Path | None, test_samples: list[data.Sample],
                     pixels: dict[Path, torch.Tensor] | None) -> float | None:
    """The live model (the `live` channel) on this job's test split, printed for the quality gate.

    A live model that cannot be scored does not fail the job: the gate then falls back
    to the figure stored from the live model's own run, and says so.
    """
    if channel is None:
        return None
    try:
        accuracy = live_test_accuracy(channel, test_samples, (lambda s: pixels[s.path]) if pixels else None)
    except LiveModelError as error:
        logger.warning("the live model could not be scored", extra={"error": str(error)})
        return None
    print(metrics.live_test_line(accuracy), flush=True)
    return accuracy


def write_failure(reason: str) -> None:
    """SageMaker takes a job's FailureReason from /opt/ml/output/failure (SM_OUTPUT_DIR)."""
    output = os.environ.get("SM_OUTPUT_DIR")
    if output:
        Path(output).mkdir(parents=True, exist_ok=True)
        (Path(output) / "failure").write_text(reason[:1024])


def run(argv: list[str] | None = None) -> int:
    try:
        main(parse_args(argv))
    except (data.DataError, PretrainedWeightsError) as error:
        # SageMaker reads the failure reason from the last lines of the log.
        logger.error(f"training refused: {error}")
        print(f"ERROR: {error}", file=sys.stderr, flush=True)
        write_failure(str(error))
        return 2
    return 0


if __name__ == "__main__":
    code = run()
    # Python's last collection walks every object torch and its compiler stack created (~0.6 s
    # of a tuning trial's few seconds) only to free memory the ending process gives back anyway.
    gc.freeze()
    sys.exit(code)
