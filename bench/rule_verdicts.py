"""Debugger rule verdicts on healthy and deliberately broken runs with the local stage's settings.

    python bench/rule_verdicts.py [--seeds 0,1,2] [--budgets 3x32,3x64,8x32@0,3x32:backbone]
                                  [--lrs 0.03,0.1,0.01] [--broken 50,1000,0:backbone] [--quick]
                                  [--work DIR] [--proposed JSON] [--policy JSON] [--markdown]

Each run is the final training job as the local stage would start it: `training.train`
(`train.main(train.parse_args(...))`, one process per run) on scikit-learn's digits
(`training.demo_data`, splits layout) with the stage's STATIC_HYPERPARAMETERS (read from
.chalice/config.json through chalice_app.config), the budget's epochs, batch size and
freeze mode, an lr, a seed, and smdebug tensors as the final job saves them
(`--debug-out`, `--debug-save-interval` = the stage's DEBUG_SAVE_INTERVAL: weights and
gradients every 100 steps, losses every 10). The five rules of `training.rules`
(`evaluate_rules`) then judge each run's tensors under four parameter sets, each with the
gate's policy for it ("veto": IssuesFound rejects the model; "warn": reported only; "off":
not run):

- `aws`:      AWS's default parameters, every rule a veto (the gate's rule before its policy);
- `stage`:    the local stage: its DEBUGGER_RULE_PARAMETERS, DEBUGGER_RULES and DEBUGGER_RULE_POLICY;
- `proposed`: PROPOSED_PARAMETERS and POLICY below (or `--proposed`, `--policy`);
- `pwi60`:    the proposal with PoorWeightInitialization's loss sign made live (steps 60).

Healthy runs use an lr of the stage's tuning range (0.01-0.1): `--lrs` is cycled over seeds
and budgets (lr number (seed + budget index) mod len), so each budget sees each lr, unless a
budget names its runs' lrs (`3x32@0=0.03+1=0.1`). Broken runs (`--broken LR[:FREEZE],...`, on the
first budget's epochs and batch size, seed 0) use an absurd lr with SGD: 50 and 1000
diverge (non-finite losses within 20 steps); 0 never moves the weights (the model stays at
its random initialisation: a frozen random trunk and its untrained head, by default).

For each run: its test accuracy, each rule's verdict and finding (BuiltInRule.finding, from
the rule's "rule evaluated" log line) per parameter set, and the gate's Debugger decision
per set. `summary` says, per set, whether every healthy run passes the veto rules and every
broken run is vetoed by one.

Runs are trained one at a time, each in a process of its own. On 2 shared cores a
full-network run took 3-4 minutes (3 epochs; 11-20 images/s) and a frozen-backbone run
about 1 minute; the default grid is ~10 full-network runs. With `--work DIR` the runs'
tensors are kept there and a run already trained with the same arguments is not trained
again (the rules are judged again, in seconds): a parameter proposal can be re-judged for free.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import multiprocessing
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

os.environ.setdefault("SMDEBUG_LOG_LEVEL", "error")  # smdebug's own INFO lines, one per rule and trial

from chalice_app.config import DEFAULT_RULE_POLICY, settings_from_env  # noqa: E402
from training.demo_data import write_digits  # noqa: E402

STAGE = "local"
# The proposal: parameters that differ from AWS's defaults (everything else stays AWS's); what
# IssuesFound does at the gate is the product's default policy (chalice_app.config): "veto"
# rejects the model, "warn" only reports.
PROPOSED_PARAMETERS: dict[str, dict[str, str]] = {
    # A warning: the stage's training-loss windows flag the non-finite losses of a diverged run;
    # AWS's default (EVAL, 10 validation steps) never compares within a 2-epoch run.
    "LossNotDecreasing": {"mode": "TRAIN", "num_steps": "50"},
}
POLICY: dict[str, str] = dict(DEFAULT_RULE_POLICY)
# The one loss-reading veto that stops the diverged runs: PoorWeightInitialization's loss sign
# made live (6 saved losses in its window). Judged too, to show what it costs.
LOSS_VETO_PARAMETERS: dict[str, dict[str, str]] = {**PROPOSED_PARAMETERS,
                                                  "PoorWeightInitialization": {"steps": "60"}}
QUICK = {"seeds": "0", "budgets": "3x32:backbone", "broken": "50:backbone,0:backbone"}


@dataclass(frozen=True)
class Run:
    kind: str  # healthy | broken
    seed: int
    epochs: int
    batch_size: int
    lr: float
    freeze: str

    @property
    def name(self) -> str:
        return f"{self.kind}-s{self.seed}-e{self.epochs}-b{self.batch_size}-lr{self.lr:g}-{self.freeze}"


@dataclass(frozen=True)
class Budget:
    epochs: int
    batch_size: int
    freeze: str | None  # None: the stage's
    seeds: tuple[tuple[int, float | None], ...] | None  # (seed, lr or None: cycled); None: --seeds


def parse_budget(text: str) -> Budget:
    """EPOCHSxBATCH[:FREEZE][@SEED[=LR]+SEED[=LR]...], e.g. 3x32, 8x32@0, 3x32:backbone@0=0.03+1=0.1."""
    spec, _, seeds = text.partition("@")
    size, _, freeze = spec.partition(":")
    epochs, _, batch = size.partition("x")
    try:
        runs = None
        if seeds:
            pairs = [item.partition("=") for item in seeds.split("+")]
            runs = tuple((int(seed), float(lr) if lr else None) for seed, _, lr in pairs)
        return Budget(int(epochs), int(batch), freeze or None, runs)
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"a budget is EPOCHSxBATCH[:FREEZE][@SEED[=LR]+SEED[=LR]], not {text!r}") from error


def stage_settings(stage: str = STAGE):
    config = json.loads((REPO / ".chalice" / "config.json").read_text())
    return settings_from_env(config["stages"][stage]["environment_variables"])


def plan(args: argparse.Namespace, static: dict[str, str]) -> list[Run]:
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    lrs = [float(x) for x in args.lrs.split(",") if x.strip()]
    budgets = [parse_budget(b) for b in args.budgets.split(",") if b.strip()]
    runs = []
    for b, budget in enumerate(budgets):
        for seed, lr in budget.seeds or [(seed, None) for seed in seeds]:
            runs.append(Run("healthy", seed, budget.epochs, budget.batch_size,
                            lrs[(seed + b) % len(lrs)] if lr is None else lr,
                            budget.freeze or static.get("freeze", "none")))
    first = budgets[0]
    for item in filter(None, (x.strip() for x in args.broken.split(","))):
        lr, _, freeze = item.partition(":")
        runs.append(Run("broken", 0, first.epochs, first.batch_size, float(lr), freeze or static.get("freeze", "none")))
    return runs


def training_argv(run: Run, static: dict[str, str], data_dir: Path, run_dir: Path, save_interval: int) -> list[str]:
    hyperparameters = {**static, "epochs": str(run.epochs), "batch-size": str(run.batch_size), "lr": f"{run.lr:g}",
                       "freeze": run.freeze, "seed": str(run.seed), "report": "off"}
    hyperparameters.pop("feature-cache", None)  # the S3 cache of a tuning job: a run here computes its own
    argv = [arg for key, value in hyperparameters.items() for arg in (f"--{key}", value)]
    return argv + ["--data-dir", str(data_dir), "--model-dir", str(run_dir / "model"),
                   "--output-dir", str(run_dir / "output"), "--debug-out", str(run_dir / "tensors"),
                   "--debug-save-interval", str(save_interval)]


def _train(argv: list[str], log: str) -> None:
    """One training job in a process of its own (spawned: no state carried between runs)."""
    with open(log, "w") as out:
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
        # A hook config on this machine would override --debug-out: the run follows its arguments.
        os.environ["SMDEBUG_CONFIG_FILE_PATH"] = os.path.join(os.path.dirname(log), "no-debughookconfig.json")
        from training import train

        train.main(train.parse_args(argv))


def train_run(argv: list[str], run_dir: Path) -> dict:
    """Train (unless this run_dir already holds a finished run of the same argv); its metrics."""
    done = run_dir / "run.json"
    if done.is_file():
        previous = json.loads(done.read_text())
        if previous.get("argv") == argv:
            return {**previous, "reused": True}
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    process = multiprocessing.get_context("spawn").Process(target=_train, args=(argv, str(run_dir / "train.log")))
    process.start()
    process.join()
    metrics_file = run_dir / "output" / "metrics.json"
    if process.exitcode != 0 or not metrics_file.is_file():
        tail = (run_dir / "train.log").read_text(errors="replace").splitlines()[-5:]
        raise RuntimeError(f"training exited {process.exitcode}: {' | '.join(tail)}")
    metrics = json.loads(metrics_file.read_text())
    result = {"argv": argv, "test_accuracy": metrics["metrics"]["test_accuracy"],
              "test_loss": metrics["metrics"]["test_loss"], "best_epoch": metrics["best_epoch"],
              "epochs_run": len(metrics["history"]), "train_seconds": round(time.perf_counter() - started, 1)}
    done.write_text(json.dumps(result))
    return {**result, "reused": False}


class _Findings(logging.Handler):
    """The `finding` (or the reason for Error) of each rule from training.rules' log records."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.found: dict[str, str | None] = {}

    def emit(self, record: logging.LogRecord) -> None:
        rule = getattr(record, "rule", None)
        if rule is not None:
            self.found[rule] = getattr(record, "finding", None) or getattr(record, "reason", None)


def judge(tensors: Path, parameter_sets: dict[str, dict]) -> dict[str, dict]:
    """{parameter set: {rule: {"verdict", "finding"}}}, all five rules under each set's parameters."""
    from training import rules

    findings = _Findings()
    logger = logging.getLogger("training.rules")
    logger.addHandler(findings)
    try:
        judged = {}
        for name, spec in parameter_sets.items():
            findings.found.clear()
            # The rules' JSON log lines go to stdout, which carries this script's JSON: keep them out.
            with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
                verdicts = rules.evaluate_rules(tensors, list(rules.RULES), spec["parameters"])
            judged[name] = {rule: {"verdict": verdict, "finding": findings.found.get(rule)}
                            for rule, verdict in verdicts.items()}
        return judged
    finally:
        logger.removeHandler(findings)


def gate(judged: dict[str, dict], policy: dict[str, str]) -> dict:
    """The gate's Debugger decision: vetoed when a "veto" rule found issues ("off": a rule the set does not run)."""
    vetoes = [rule for rule, result in judged.items()
              if policy.get(rule) == "veto" and result["verdict"] == "IssuesFound"]
    warnings = [rule for rule, result in judged.items()
                if policy.get(rule) == "warn" and result["verdict"] == "IssuesFound"]
    return {"vetoed": bool(vetoes), "vetoes": vetoes, "warnings": warnings}


def summarise(results: list[dict], sets: list[str]) -> dict:
    summary = {}
    for name in sets:
        healthy = [r for r in results if r["kind"] == "healthy"]
        broken = [r for r in results if r["kind"] == "broken"]
        passed = [r["name"] for r in healthy if not r["gate"][name]["vetoed"]]
        vetoed = [r["name"] for r in broken if r["gate"][name]["vetoed"]]
        fired = {rule: sum(r["rules"][name][rule]["verdict"] == "IssuesFound" for r in healthy)
                 for rule in results[0]["rules"][name]} if results else {}
        summary[name] = {
            "healthy_passed": f"{len(passed)}/{len(healthy)}",
            "broken_vetoed": f"{len(vetoed)}/{len(broken)}",
            "goal_met": len(passed) == len(healthy) and len(vetoed) == len(broken),
            "healthy_runs_each_rule_fired_on": fired,
        }
    return summary


ABBREVIATIONS = {"VanishingGradient": "VG", "ExplodingTensor": "ET", "Overfit": "OF", "Overtraining": "OT",
                 "PoorWeightInitialization": "PWI", "LossNotDecreasing": "LND"}
MARKS = {"NoIssuesFound": "ok", "IssuesFound": "**ISSUES**", "Error": "error"}


def markdown(results: list[dict], parameter_sets: dict[str, dict]) -> str:
    rules = list(ABBREVIATIONS)
    sets = list(parameter_sets)
    head = ["run", "seed", "epochs", "batch", "lr", "freeze", "test acc"]
    for name in sets:
        policy = parameter_sets[name]["policy"]
        head += [f"{ABBREVIATIONS[rule]} {name} ({policy.get(rule, 'off')})" for rule in rules] + [f"gate {name}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        row = [r["kind"], str(r["seed"]), str(r["epochs"]), str(r["batch_size"]), f"{r['lr']:g}", r["freeze"],
               f"{r['test_accuracy']:.4f}"]
        for name in sets:
            row += [MARKS[r["rules"][name][rule]["verdict"]] for rule in rules]
            row.append("VETO" if r["gate"][name]["vetoed"] else "pass")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--budgets", default="3x32,3x64,8x32@0,3x32:backbone",
                        help="EPOCHSxBATCH[:FREEZE][@SEED[=LR]+SEED[=LR]], comma-separated (an lr given "
                        "with its seed, else --lrs cycled)")
    parser.add_argument("--lrs", default="0.03,0.1,0.01", help="healthy runs' lrs, cycled over seeds and budgets")
    parser.add_argument("--broken", default="50,1000,0:backbone", help="broken runs: LR[:FREEZE], comma-separated")
    parser.add_argument("--quick", action="store_true",
                        help="a small subset: seeds {seeds}, budgets {budgets}, broken {broken}".format(**QUICK))
    parser.add_argument("--work", type=Path, default=None,
                        help="keep the runs here and reuse those already trained (default: a temporary folder)")
    parser.add_argument("--proposed", type=json.loads, default=None, metavar="JSON",
                        help="{rule: {param: value}} instead of PROPOSED_PARAMETERS")
    parser.add_argument("--policy", type=json.loads, default=None, metavar="JSON",
                        help='{rule: "veto" | "warn"} instead of POLICY')
    parser.add_argument("--markdown", action="store_true", help="also print the table as markdown (after the JSON)")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.budgets, args.broken = QUICK["seeds"], QUICK["budgets"], QUICK["broken"]

    settings = stage_settings()
    static = dict(settings.static_hyperparameters)
    # Each set: rule parameters and the gate's policy. `aws`: AWS's defaults, every rule a veto
    # (the gate's rule today: any IssuesFound rejects); `stage`: the local stage today (the
    # rules it runs veto, the others are not run); `proposed`: this benchmark's proposal.
    parameter_sets = {
        "aws": {"parameters": {}, "policy": {rule: "veto" for rule in ABBREVIATIONS}},
        "stage": {"parameters": settings.debugger_rule_parameters,
                  "policy": {rule: settings.debugger_rule_policy[rule] if rule in settings.debugger_rules else "off"
                             for rule in ABBREVIATIONS}},
        "proposed": {"parameters": args.proposed if args.proposed is not None else PROPOSED_PARAMETERS,
                     "policy": args.policy or POLICY},
        "pwi60": {"parameters": LOSS_VETO_PARAMETERS, "policy": POLICY},
    }
    sets = list(parameter_sets)
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rule-verdicts-")))
        data_dir = work / "digits"
        if not (data_dir / "test").is_dir():
            write_digits(data_dir, "splits")
        results = []
        for run in plan(args, static):
            run_dir = work / "runs" / run.name
            argv = training_argv(run, static, data_dir, run_dir, settings.debug_save_interval)
            trained = train_run(argv, run_dir)
            judged = judge(run_dir / "tensors", parameter_sets)
            result = {"name": run.name, **asdict(run), **{k: v for k, v in trained.items() if k != "argv"},
                      "rules": judged,
                      "gate": {name: gate(judged[name], spec["policy"]) for name, spec in parameter_sets.items()}}
            results.append(result)
            print(f"{run.name}: test_accuracy={result['test_accuracy']:.4f} "
                  + " ".join(f"{name}={'VETO' if result['gate'][name]['vetoed'] else 'pass'}" for name in sets),
                  file=sys.stderr, flush=True)
    output = {
        "stage": STAGE,
        "static_hyperparameters": static,
        "debug_save_interval": settings.debug_save_interval,
        "stage_rules": list(settings.debugger_rules),
        "parameter_sets": parameter_sets,
        "runs": results,
        "summary": summarise(results, sets),
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(output, indent=2))
    if args.markdown:
        print(markdown(results, parameter_sets))


if __name__ == "__main__":
    main()
