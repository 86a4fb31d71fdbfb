"""The training job's HTML report: curves, confusion matrix, system metrics, findings.

    write_report(out_dir, history=..., test=..., confusion=..., classes=..., profile=summary)
    -> out_dir/report.html, with loss_curves.png, accuracy.png, confusion_matrix.png and,
       when a profile is given, system_metrics.png and step_times.png beside it

The PNGs are also embedded in the HTML, so the one file reads anywhere (downloaded
from S3, attached to a ticket). Findings are the plain-word diagnosis of the run: each
one states the figures that support it and what to do; no figure, no finding.
Plots use matplotlib's Figure API (Agg), never pyplot's global state: the report may
be written from any thread of a headless training container.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure

from training.profiler import SUMMARY, ProfileSummary

REPORT = "report.html"
LOSS_PNG = "loss_curves.png"
ACCURACY_PNG = "accuracy.png"
CONFUSION_PNG = "confusion_matrix.png"
SYSTEM_PNG = "system_metrics.png"
STEPS_PNG = "step_times.png"

# Thresholds of the findings. Each is deliberately loose: a finding should be worth acting on.
DATA_WAIT_BOUND = 0.30  # share of step time spent waiting for the loader
BETWEEN_STEPS_BOUND = 0.20  # share of step time spent neither loading nor computing
GPU_UNDERUSED_PERCENT = 50.0
CPU_SATURATED_PERCENT = 90.0
MEMORY_FULL_PERCENT = 90.0
TINY_BATCH = 16  # below this, batch statistics (BatchNorm) and throughput both suffer
SHORT_STEP_MS = 20.0  # steps this short are dominated by fixed per-step costs (launches, optimiser, Python)
ROOMY_BATCH = 64  # from here up a batch is not called "too small" on speed grounds alone
OVERFIT_RISE = 1.10  # final valid loss at least 10 % above its best
NO_PROGRESS = 0.98  # final train loss above 98 % of the first epoch's
NEAR_CHANCE = 1.5  # test accuracy within 1.5x of guessing

ANNOTATE_MAX_CLASSES = 20  # per-cell counts only while they stay readable
TOP_CONFUSED = 15


@dataclass(frozen=True)
class Finding:
    key: str  # stable identifier, e.g. "data-loader-bound"
    title: str
    evidence: str  # the figures that support it
    action: str  # what to do about it
    figure: str | None = None  # the PNG that shows it


# --------------------------------------------------------------------------- findings


def _pct(value: float) -> str:
    return f"{100 * value:.0f}%"


def _profile_findings(p: ProfileSummary, hyperparameters: dict[str, Any]) -> list[Finding]:
    found: list[Finding] = []
    cpu_busy = p.cpu_util_mean is not None and p.cpu_util_mean >= CPU_SATURATED_PERCENT
    data_bound = p.steps > 0 and p.data_wait_fraction >= DATA_WAIT_BOUND
    gpu_idle = p.gpu_present and p.gpu_util_mean is not None and p.gpu_util_mean < GPU_UNDERUSED_PERCENT

    if data_bound:
        workers = hyperparameters.get("workers")
        workers_text = f" (now {workers})" if workers is not None else ""
        if cpu_busy:
            action = (
                f"The CPU is already saturated, so more loader workers will not help: cache the decoded, "
                f"resized images (or store them pre-resized), or move to an instance with more vCPUs "
                f"than the {p.cpu_count} here."
            )
        else:
            action = (
                f"Raise the `workers` hyperparameter{workers_text} towards the {p.cpu_count} vCPUs and keep "
                f"workers persistent; if decoding dominates, cache decoded, resized images."
            )
        found.append(
            Finding(
                "data-loader-bound",
                "Data-loader bound: the model waits for its data",
                f"{_pct(p.data_wait_fraction)} of each training step is spent waiting for the next batch "
                f"({p.mean_data_wait_ms:.1f} ms waiting vs {p.mean_compute_ms:.1f} ms computing per step, "
                f"over {p.steps} steps).",
                action,
                STEPS_PNG,
            )
        )
    if p.gpu_present and not p.cuda_used:
        found.append(
            Finding(
                "gpu-unused",
                "A GPU is present but the job ran on the CPU",
                f"GPU seen: {', '.join(p.gpu_names)}; the training process never initialised CUDA.",
                "Check that torch sees CUDA in the container (torch.cuda.is_available()) and that the model "
                "and batches are moved to the GPU.",
                SYSTEM_PNG,
            )
        )
    elif gpu_idle:
        memory = ""
        if p.gpu_memory_peak_mb is not None and p.gpu_memory_total_mb:
            memory = f"; at most {p.gpu_memory_peak_mb:.0f} of {p.gpu_memory_total_mb:.0f} MB of GPU memory in use"
        found.append(
            Finding(
                "gpu-under-used",
                "GPU under-used",
                f"The GPU was busy {p.gpu_util_mean:.0f}% of the time on average "
                f"(peak {p.gpu_util_max:.0f}%){memory}.",
                "Feed it faster first (see the data-loader finding)."
                if data_bound
                else "Give each step more work: raise batch-size while GPU memory allows, or use a larger model "
                "or image size; a smaller, cheaper GPU instance is the other answer.",
                SYSTEM_PNG,
            )
        )
    if p.steps > 0 and p.mean_batch_size > 0 and p.mean_batch_size < ROOMY_BATCH:
        reasons = []
        if p.mean_batch_size < TINY_BATCH:
            reasons.append(f"batches hold {p.mean_batch_size:.1f} images on average")
        if p.mean_compute_ms < SHORT_STEP_MS:
            reasons.append(
                f"a step computes for only {p.mean_compute_ms:.1f} ms, so fixed per-step costs "
                f"(kernel launches, the optimiser step, Python) weigh heavily"
            )
        if gpu_idle and not data_bound:
            reasons.append(f"the GPU idles ({p.gpu_util_mean:.0f}% busy) while batches are small")
        if reasons:
            if p.mean_batch_size >= TINY_BATCH:
                reasons.append(f"the mean batch is {p.mean_batch_size:.1f} images")
            evidence = "; ".join(reasons)
            found.append(
                Finding(
                    "batch-too-small",
                    "Batch too small",
                    evidence[0].upper() + evidence[1:] + ".",
                    "Raise batch-size 2-4x (scale lr with it) while memory allows; images/s should rise "
                    f"from {p.images_per_s:.0f}.",
                    STEPS_PNG,
                )
            )
    if p.steps > 0 and p.other_fraction >= BETWEEN_STEPS_BOUND:
        found.append(
            Finding(
                "between-steps-overhead",
                "Time lost between steps",
                f"{_pct(p.other_fraction)} of each step ({p.mean_other_ms:.1f} ms) is spent neither loading "
                f"nor computing: per-step bookkeeping such as metric reads, logging or Debugger hooks.",
                "Accumulate metrics on the device and read them once per epoch (no .item() per step); "
                "save Debugger tensors less often.",
                STEPS_PNG,
            )
        )
    if cpu_busy:
        found.append(
            Finding(
                "cpu-saturated",
                "CPU saturated",
                f"The machine's {p.cpu_count} cores were {p.cpu_util_mean:.0f}% busy on average "
                f"(every process on the machine counts, not only this job).",
                "Decoding and augmentation compete with the training process for the CPU: cache preprocessed "
                "images, lower image-size, or use an instance with more vCPUs."
                if data_bound or not p.cuda_used
                else "Move preprocessing off the CPU (cache resized images) or use an instance with more vCPUs.",
                SYSTEM_PNG,
            )
        )
    if p.memory_used_peak_percent is not None and p.memory_used_peak_percent >= MEMORY_FULL_PERCENT:
        found.append(
            Finding(
                "memory-nearly-full",
                "Memory nearly full",
                f"System memory peaked at {p.memory_used_peak_percent:.0f}% used "
                f"(training process {p.peak_rss_mb:.0f} MB, loader workers "
                f"{p.peak_children_rss_mb or 0:.0f} MB).",
                "Lower `workers` (each worker holds its own copy of the dataset state) or batch-size, "
                "or use an instance with more memory.",
                SYSTEM_PNG,
            )
        )
    return found


def _curve_findings(history: list[dict[str, Any]]) -> list[Finding]:
    found: list[Finding] = []
    valid = [(h["epoch"], h["valid_loss"], h.get("train_loss")) for h in history if _finite(h.get("valid_loss"))]
    if len(valid) >= 3:
        best_epoch, best_loss, best_train = min(valid, key=lambda row: row[1])
        last_epoch, last_loss, last_train = valid[-1]
        train_fell = _finite(best_train) and _finite(last_train) and last_train < best_train
        if best_epoch != last_epoch and last_loss >= OVERFIT_RISE * best_loss and train_fell:
            found.append(
                Finding(
                    "overfitting",
                    "Overfitting visible in the curves",
                    f"Validation loss was lowest at epoch {best_epoch} ({best_loss:.4f}) and rose to "
                    f"{last_loss:.4f} by epoch {last_epoch}, while training loss kept falling "
                    f"({best_train:.4f} to {last_train:.4f}).",
                    f"Stop near epoch {best_epoch} (lower `patience` or `epochs`), or regularise: more "
                    f"weight-decay or dropout, stronger augmentation, more data, a frozen backbone.",
                    LOSS_PNG,
                )
            )
    train = [(h["epoch"], h["train_loss"]) for h in history if _finite(h.get("train_loss"))]
    if len(train) >= 2 and train[-1][1] >= NO_PROGRESS * train[0][1]:
        found.append(
            Finding(
                "not-learning",
                "Training loss did not fall",
                f"Training loss went from {train[0][1]:.4f} (epoch {train[0][0]}) to {train[-1][1]:.4f} "
                f"(epoch {train[-1][0]}).",
                "Try another learning rate (usually lower for adam/adamw, higher for sgd), check that the "
                "labels match the images, and unfreeze more of the backbone.",
                LOSS_PNG,
            )
        )
    return found


def diagnose(
    profile: ProfileSummary | None,
    history: list[dict[str, Any]],
    *,
    test: dict[str, Any] | None = None,
    num_classes: int | None = None,
    rule_verdicts: dict[str, str] | None = None,
    hyperparameters: dict[str, Any] | None = None,
) -> list[Finding]:
    """Every finding the figures support, most actionable first; [] means no issues found."""
    found = _profile_findings(profile, hyperparameters or {}) if profile else []
    found += _curve_findings(history)
    accuracy = (test or {}).get("test_accuracy")
    if num_classes and _finite(accuracy) and accuracy <= NEAR_CHANCE / num_classes:
        found.append(
            Finding(
                "near-chance",
                "Test accuracy near chance",
                f"Test accuracy {accuracy:.3f} against {1 / num_classes:.3f} for guessing among {num_classes} classes.",
                "The model has not learnt the task: see the curves, train longer or with another learning rate.",
                CONFUSION_PNG,
            )
        )
    for rule, status in sorted((rule_verdicts or {}).items()):
        if status == "IssuesFound":
            found.append(
                Finding(
                    f"rule-{rule}",
                    f"Debugger rule {rule} found issues",
                    f"SageMaker Debugger's {rule} rule ended with {status}.",
                    f"Read the {rule} rule's evaluation in the training job and the curves above.",
                    None,
                )
            )
    return found


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


# --------------------------------------------------------------------------- confusion matrix


def _confusion_array(confusion: Sequence[Sequence[int]], classes: Sequence[str]) -> np.ndarray:
    matrix = np.asarray(confusion, dtype=np.int64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"the confusion matrix must be square, got shape {matrix.shape}")
    if matrix.shape[0] != len(classes):
        raise ValueError(f"the confusion matrix has {matrix.shape[0]} rows but there are {len(classes)} classes")
    if (matrix < 0).any():
        raise ValueError("the confusion matrix holds negative counts")
    return matrix


def most_confused(
    confusion: Sequence[Sequence[int]], classes: Sequence[str], top: int = TOP_CONFUSED
) -> list[dict[str, Any]]:
    """The largest off-diagonal cells: true class, predicted class, count, share of the true class."""
    matrix = _confusion_array(confusion, classes)
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    support = matrix.sum(axis=1)
    order = np.argsort(off, axis=None, kind="stable")[::-1]
    pairs = []
    for flat in order[:top]:
        true, predicted = divmod(int(flat), len(classes))
        if off[true, predicted] == 0:
            break
        count = int(off[true, predicted])
        pairs.append(
            {"true": classes[true], "predicted": classes[predicted], "count": count, "share": count / support[true]}
        )
    return pairs


def per_class_recall(confusion: Sequence[Sequence[int]], classes: Sequence[str]) -> list[dict[str, Any]]:
    """Recall and support per class, worst first (classes without test images last)."""
    matrix = _confusion_array(confusion, classes)
    support = matrix.sum(axis=1)
    rows = [
        {"class": name, "recall": (matrix[i, i] / support[i]) if support[i] else None, "support": int(support[i])}
        for i, name in enumerate(classes)
    ]
    return sorted(rows, key=lambda row: (row["recall"] is None, row["recall"] or 0.0))


# --------------------------------------------------------------------------- plots


def _save(figure: Figure, path: Path) -> Path:
    figure.savefig(path, dpi=100, bbox_inches="tight")
    return path


def plot_losses(history: list[dict[str, Any]], test: dict[str, Any], path: Path) -> Path:
    figure = Figure(figsize=(7, 4.2))
    ax = figure.add_subplot()
    epochs = [h["epoch"] for h in history]
    for key, label in (("train_loss", "train"), ("valid_loss", "validation")):
        values = [h.get(key, math.nan) for h in history]
        ax.plot(epochs, values, marker="o", label=label)
    valid = [(h["epoch"], h["valid_loss"]) for h in history if _finite(h.get("valid_loss"))]
    if valid:
        best_epoch, best = min(valid, key=lambda row: row[1])
        ax.axvline(best_epoch, color="grey", linestyle=":", label=f"best validation (epoch {best_epoch})")
    if _finite(test.get("test_loss")):
        ax.axhline(test["test_loss"], color="black", linestyle="--", label=f"test {test['test_loss']:.4f}")
    ax.set(xlabel="epoch", ylabel="loss (per-sample mean)", title="Loss")
    losses = [v for h in history for k in ("train_loss", "valid_loss") if _finite(v := h.get(k)) and v > 0]
    if losses and max(losses) / min(losses) > 30:  # a first-epoch spike would flatten the rest
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(figure, path)


def plot_accuracy(history: list[dict[str, Any]], test: dict[str, Any], path: Path) -> Path:
    figure = Figure(figsize=(7, 4.2))
    ax = figure.add_subplot()
    epochs = [h["epoch"] for h in history]
    keys = sorted({k for h in history for k in h if k.endswith("_accuracy")})
    for key in keys:
        ax.plot(epochs, [h.get(key, math.nan) for h in history], marker="o", label=key.removesuffix("_accuracy"))
    if _finite(test.get("test_accuracy")):
        ax.axhline(test["test_accuracy"], color="black", linestyle="--", label=f"test {test['test_accuracy']:.3f}")
    ax.set(xlabel="epoch", ylabel="accuracy", title="Accuracy", ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(figure, path)


def confusion_figure(confusion: Sequence[Sequence[int]], classes: Sequence[str]) -> Figure:
    """Row-normalised colours (each true class sums to 1), so rare classes read as well as common ones,
    on a square-root scale so that a few stray predictions still show. Counts are written in the
    cells only for few classes; the figure grows with the class count."""
    matrix = _confusion_array(confusion, classes)
    n = len(classes)
    support = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, support, out=np.zeros(matrix.shape, dtype=float), where=support > 0)
    side = min(26.0, max(6.0, 3.0 + 0.14 * n))
    figure = Figure(figsize=(side + 1.5, side))
    ax = figure.add_subplot()
    image = ax.imshow(share, cmap="Blues", norm=PowerNorm(0.5, vmin=0, vmax=1), interpolation="nearest")
    figure.colorbar(image, ax=ax, fraction=0.04, pad=0.02, label="share of the true class")
    cell_pt = 0.75 * side * 72 / n
    font = max(4.0, min(10.0, 0.8 * cell_pt))
    labels = [name if len(name) <= 28 else name[:27] + "…" for name in classes]
    ax.set_xticks(range(n), labels, rotation=90, fontsize=font)
    ax.set_yticks(range(n), labels, fontsize=font)
    ax.set(xlabel="predicted class", ylabel="true class", title=f"Confusion matrix, test split ({matrix.sum()} images)")
    if n <= ANNOTATE_MAX_CLASSES:
        for (i, j), count in np.ndenumerate(matrix):
            if count:
                colour = "white" if share[i, j] > 0.5 else "black"
                ax.text(j, i, str(count), ha="center", va="center", fontsize=max(6.0, font - 1), color=colour)
    return figure


def plot_confusion(confusion: Sequence[Sequence[int]], classes: Sequence[str], path: Path) -> Path:
    return _save(confusion_figure(confusion, classes), path)


def _read_jsonl(path: str | None) -> list[dict[str, Any]]:
    if not path or not Path(path).is_file():
        return []
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a job killed mid-write leaves a torn last line
            continue
    return rows


def plot_system(samples: list[dict[str, Any]], path: Path) -> Path:
    gpu = any(s.get("gpu_util") for s in samples)
    rows = 3 if gpu else 2
    figure = Figure(figsize=(9, 2.6 * rows))
    axes = figure.subplots(rows, 1, sharex=True)
    t = [s["t"] for s in samples]
    cpu_ax, memory_ax = axes[0], axes[1]
    cores = [s.get("cpu_per_core") or [] for s in samples]
    for core in range(max((len(c) for c in cores), default=0)):
        cpu_ax.plot(t, [c[core] if core < len(c) else math.nan for c in cores], color="grey", alpha=0.25, lw=0.8)
    cpu_ax.plot(t, [s.get("cpu_percent", math.nan) for s in samples], color="tab:blue", lw=2, label="all cores")
    cpu_ax.set(ylabel="CPU busy %", ylim=(0, 105), title="System metrics (grey: single cores)")
    cpu_ax.legend(loc="upper right")
    memory_ax.plot(t, [s.get("rss_mb", math.nan) for s in samples], label="training process RSS")
    if any("children_rss_mb" in s for s in samples):
        memory_ax.plot(t, [s.get("children_rss_mb", math.nan) for s in samples], label="loader workers RSS")
    memory_ax.set(ylabel="MB")
    memory_ax.legend(loc="upper left")
    if any("memory_used_percent" in s for s in samples):
        used = memory_ax.twinx()
        used.plot(t, [s.get("memory_used_percent", math.nan) for s in samples], color="tab:red", ls="--", lw=1)
        used.set(ylabel="system memory used %", ylim=(0, 105))
    if gpu:
        gpu_ax = axes[2]
        gpu_ax.plot(t, [_nanmean(s.get("gpu_util")) for s in samples], color="tab:green", label="GPU busy %")
        gpu_ax.set(ylabel="GPU busy %", ylim=(0, 105))
        gpu_memory = gpu_ax.twinx()
        gpu_memory.plot(t, [sum(s.get("gpu_mem_used_mb") or [math.nan]) for s in samples], color="tab:purple", ls="--")
        gpu_memory.set(ylabel="GPU memory MB")
        gpu_ax.legend(loc="upper left")
    axes[-1].set(xlabel="seconds since the profiler started")
    for ax in axes:
        ax.grid(alpha=0.3)
    return _save(figure, path)


def _nanmean(values: list[float] | None) -> float:
    values = [v for v in values or [] if _finite(v)]
    return sum(values) / len(values) if values else math.nan


def plot_steps(steps: list[dict[str, Any]], path: Path) -> Path:
    """Where each training step's time went, step by step (traced steps shaded)."""
    train = [s for s in steps if s["phase"] == "train"] or steps
    x = range(1, len(train) + 1)
    figure = Figure(figsize=(9, 4))
    ax = figure.add_subplot()
    ax.stackplot(
        x,
        [1000 * s["data_wait_s"] for s in train],
        [1000 * s["compute_s"] for s in train],
        [1000 * s.get("other_s", 0.0) for s in train],
        labels=["waiting for data", "compute", "between steps"],
        colors=["tab:orange", "tab:blue", "tab:grey"],
        step="mid",
    )
    for i, (before, step) in enumerate(zip(train, train[1:]), start=2):
        if step.get("epoch") != before.get("epoch"):
            ax.axvline(i - 0.5, color="black", lw=0.6, ls=":")
    traced = [i for i, s in zip(x, train) if s.get("traced")]
    if traced:
        ax.axvspan(min(traced) - 0.5, max(traced) + 0.5, color="yellow", alpha=0.25, label="torch.profiler trace")
    ax.set(xlabel="training step (dotted: new epoch)", ylabel="ms", title="Training step time: data wait vs compute")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    return _save(figure, path)


# --------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{margin-bottom:.2em} .meta{color:#666;margin-top:0}
table{border-collapse:collapse;margin:.5em 0 1.5em} th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f3f3f3} td.num{text-align:right;font-variant-numeric:tabular-nums}
.finding{border-left:4px solid #d9822b;background:#fff8f0;padding:.5em 1em;margin:.8em 0}
.finding h3{margin:.2em 0} .ok{border-left:4px solid #2b9d4a;background:#f1faf3;padding:.5em 1em}
figure{margin:1em 0} figure img{max-width:100%;border:1px solid #eee} figcaption{color:#555;font-size:.9em}
.issues{color:#b3261e;font-weight:600}
"""


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v, digits) for v in value) or "none"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{_esc(_fmt(c))}</td>' if isinstance(c, (int, float)) and not isinstance(c, bool)
            else f"<td>{_esc(_fmt(c))}</td>"
            for c in row
        )
        + "</tr>"
        for row in rows
    )  # fmt: skip
    return f"<table><tr>{head}</tr>{body}</table>"


def _figure(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure id="{_esc(path.stem)}"><img alt="{_esc(caption)}" src="data:image/png;base64,{data}">'
        f'<figcaption>{_esc(caption)} (<a href="{_esc(path.name)}">{_esc(path.name)}</a>)</figcaption></figure>'
    )


def _findings_html(findings: list[Finding]) -> str:
    if not findings:
        return '<div class="ok"><b>No issues found.</b> The profile and the curves show nothing worth acting on.</div>'
    parts = []
    for finding in findings:
        figure = f'<p>Figure: <a href="#{_esc(Path(finding.figure).stem)}">{_esc(finding.figure)}</a></p>' if finding.figure else ""
        parts.append(
            f'<div class="finding" id="finding-{_esc(finding.key)}"><h3>{_esc(finding.title)}</h3>'
            f"<p><b>Evidence:</b> {_esc(finding.evidence)}</p><p><b>What to do:</b> {_esc(finding.action)}</p>{figure}</div>"
        )
    return "".join(parts)


def _profile_rows(p: ProfileSummary) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = [
        ("training steps summarised", p.steps),
        ("steps per phase", ", ".join(f"{k}: {v}" for k, v in p.phase_steps.items())),
        ("profiled wall time (s)", p.wall_s),
        ("mean batch size", p.mean_batch_size),
        ("images/s (training)", p.images_per_s),
        ("mean step (ms)", p.mean_step_ms),
        ("mean data wait (ms)", p.mean_data_wait_ms),
        ("mean compute (ms)", p.mean_compute_ms),
        ("mean between steps (ms)", p.mean_other_ms),
        ("data-wait fraction", p.data_wait_fraction),
        ("CPU busy, mean / max (%)", f"{_fmt(p.cpu_util_mean, 1)} / {_fmt(p.cpu_util_max, 1)} over {p.cpu_count} cores"),
        ("peak RSS, training process (MB)", p.peak_rss_mb),
        ("peak RSS, loader workers (MB)", p.peak_children_rss_mb),
        ("peak system memory used (%)", p.memory_used_peak_percent),
        ("GPU", ", ".join(p.gpu_names) or "none"),
    ]
    if p.gpu_present:
        rows += [
            ("GPU busy, mean / max (%)", f"{_fmt(p.gpu_util_mean, 1)} / {_fmt(p.gpu_util_max, 1)}"),
            ("GPU memory peak / total (MB)", f"{_fmt(p.gpu_memory_peak_mb, 0)} / {_fmt(p.gpu_memory_total_mb, 0)}"),
        ]
    rows.append(("system samples", p.samples))
    return rows


def write_report(
    out_dir: Path,
    *,
    history: list[dict[str, Any]],
    test: dict[str, Any],
    confusion: list[list[int]],
    classes: list[str],
    profile: ProfileSummary | None,
    rule_verdicts: dict[str, str] | None = None,
    hyperparameters: dict[str, Any] | None = None,
    optimised: dict[str, Any] | None = None,
) -> Path:
    """Write out_dir/report.html and its PNGs; return the HTML's path.

    `optimised` is training/optimised.py's Outcome.to_dict(): each candidate's agreement and latency."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _confusion_array(confusion, classes)  # refuse bad input before writing anything
    findings = diagnose(
        profile,
        history,
        test=test,
        num_classes=len(classes),
        rule_verdicts=rule_verdicts,
        hyperparameters=hyperparameters,
    )
    sections = [f"<h2>Findings</h2>{_findings_html(findings)}"]

    results = [("test accuracy", test.get("test_accuracy")), ("test loss", test.get("test_loss"))]
    valid = [h for h in history if _finite(h.get("valid_accuracy"))]
    if valid:
        best = max(valid, key=lambda h: h["valid_accuracy"])
        results.append(("best validation accuracy", f"{best['valid_accuracy']:.4f} (epoch {best['epoch']})"))
    results += [("epochs run", len(history)), ("classes", len(classes)), ("test images", int(np.sum(confusion)))]
    sections.insert(0, f"<h2>Results</h2>{_table(['metric', 'value'], results)}")

    if history:
        sections.append(
            "<h2>Curves</h2>"
            + _figure(plot_losses(history, test, out_dir / LOSS_PNG), "Loss per epoch")
            + _figure(plot_accuracy(history, test, out_dir / ACCURACY_PNG), "Accuracy per epoch")
        )

    confused = most_confused(confusion, classes)
    worst = per_class_recall(confusion, classes)[:TOP_CONFUSED]
    sections.append(
        "<h2>Confusion matrix (test split)</h2>"
        + _figure(plot_confusion(confusion, classes, out_dir / CONFUSION_PNG), "Rows: true class; columns: predicted")
        + "<h3>Most confused pairs</h3>"
        + (
            _table(
                ["true class", "predicted as", "images", "share of the true class"],
                [(c["true"], c["predicted"], c["count"], f"{100 * c['share']:.1f}%") for c in confused],
            )
            if confused
            else "<p>No test image was misclassified.</p>"
        )
        + "<h3>Classes with the lowest recall</h3>"
        + _table(
            ["class", "recall", "test images"],
            [(r["class"], "n/a" if r["recall"] is None else f"{100 * r['recall']:.1f}%", r["support"]) for r in worst],
        )
    )

    if profile is not None:
        figures = ""
        samples = _read_jsonl(profile.system_metrics_path)
        if samples:
            figures += _figure(plot_system(samples, out_dir / SYSTEM_PNG), "CPU, memory and GPU every sample")
        steps = _read_jsonl(profile.step_times_path)
        if steps:
            figures += _figure(plot_steps(steps, out_dir / STEPS_PNG), "Where each training step's time went")
        trace = ""
        if profile.trace_path and Path(profile.trace_path).is_file():
            # The profiler may write to its own folder: link the trace relative to the report.
            link = Path(os.path.relpath(Path(profile.trace_path).resolve(), out_dir.resolve())).as_posix()
            trace = (
                f'<p>A torch.profiler trace of a few training steps: <a href="{_esc(link)}">{_esc(link)}</a> '
                f"(open it in chrome://tracing or Perfetto).</p>"
            )
        sections.append(f"<h2>Profile</h2>{_table(['figure', 'value'], _profile_rows(profile))}{trace}{figures}")

    if optimised:
        sections.append(_optimised_html(optimised))
    if hyperparameters:
        rows = sorted((str(k), v) for k, v in hyperparameters.items())
        sections.append(f"<h2>Hyperparameters</h2>{_table(['name', 'value'], rows)}")
    if rule_verdicts:
        rows_html = "".join(
            f'<tr><td>{_esc(rule)}</td><td class="{"issues" if status == "IssuesFound" else ""}">{_esc(status)}</td></tr>'
            for rule, status in sorted(rule_verdicts.items())
        )
        sections.append(f"<h2>Debugger rules</h2><table><tr><th>rule</th><th>status</th></tr>{rows_html}</table>")

    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    document = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Training report</title><style>{_CSS}</style></head><body>"
        f'<h1>Training report</h1><p class="meta">Generated {generated}; '
        f"{len(findings)} finding{'s' if len(findings) != 1 else ''}.</p>"
        + "".join(f"<section>{s}</section>" for s in sections)
        + "</body></html>\n"
    )
    path = out_dir / REPORT
    path.write_text(document, encoding="utf-8")
    return path


def _optimised_html(optimised: dict[str, Any]) -> str:
    """The optimised model beside the eager one: what was measured, and what the artefact holds."""
    eager = optimised.get("eager_latency_ms")
    rows = [("pytorch-eager (fp32)", "1.0000", f"{eager:.2f}" if _finite(eager) else "n/a", "1.00x", "always")]
    for candidate in optimised.get("candidates", []):
        speed = f"{eager / candidate['latency_ms']:.2f}x" if _finite(eager) and candidate["latency_ms"] else "n/a"
        rows.append((candidate["engine"], f"{candidate['agreement']:.4f}", f"{candidate['latency_ms']:.2f}", speed,
                     "yes" if candidate["engine"] == optimised.get("engine") else "no"))
    chosen = optimised.get("engine") or "none: the endpoint serves the eager model"
    return (f"<h2>Optimised model</h2><p>In the artefact: {_esc(chosen)} (needs top-1 agreement with the eager "
            f"model of at least {optimised.get('min_agreement')} on the test split; the fastest that agrees).</p>"
            + _table(["engine", "top-1 agreement", "batch-1 ms", "speed-up", "in the artefact"], rows))


def report_from_output(output_dir: Path, out_dir: Path, rule_verdicts: dict[str, str] | None = None) -> Path:
    """The report again, from a finished job's output (its SM_OUTPUT_DATA_DIR, as output.tar.gz
    holds it), with what is known only after the job: the Debugger rules' verdicts, which the
    service evaluates over the tensors once the job has ended."""
    output_dir = Path(output_dir)
    metrics = json.loads((output_dir / "metrics.json").read_text())
    profile = None
    summary = output_dir / "profiler" / SUMMARY
    if summary.is_file():
        data = json.loads(summary.read_text())
        for key in ("system_metrics_path", "step_times_path", "trace_path"):
            if data.get(key):  # the job's own paths: here the files sit beside the summary
                data[key] = str(summary.parent / Path(data[key]).name)
        profile = ProfileSummary.from_dict(data)
    return write_report(out_dir, history=metrics["history"], test=metrics["metrics"],
                        confusion=metrics["confusion_matrix"], classes=metrics["classes"], profile=profile,
                        rule_verdicts=rule_verdicts, hyperparameters=metrics.get("hyperparameters"),
                        optimised=metrics.get("optimised"))
