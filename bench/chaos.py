"""The chaos run's long form: SIGKILLs of random components while the pipeline works, then the invariants.

    python bench/chaos.py [--kills 20] [--seed 1] [--gap-min 15] [--gap-max 45] [--work-dir DIR]

A stack on a fresh state directory trains on the digits (run 1), serves, trains again on more
(run 2, a blue/green update), with images arriving all along and a prober invoking the
endpoint; meanwhile, at seeded random moments, one random live component (moto, the stack's
own process, a training job, an endpoint host) is killed and what does not come back by
itself is restarted (`local_aws.project.chaos`). Prints JSON: kills by component and phase,
restart times, the endpoint's unavailability windows, the invariants. Exits 1 when one fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from local_aws.project.chaos import ChaosRun  # noqa: E402
from training.demo_data import write_digits  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--gap-min", type=float, default=15.0, help="seconds between kills, at least")
    parser.add_argument("--gap-max", type=float, default=45.0, help="seconds between kills, at most")
    parser.add_argument("--work-dir", type=Path, help="kept afterwards (default: a temporary directory)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="chaos-") as temporary:
        work_dir = args.work_dir or Path(temporary)
        digits = work_dir / "digits"
        write_digits(digits, "labels")
        report = ChaosRun(work_dir, digits, kills=args.kills, seed=args.seed,
                          gap_seconds=(args.gap_min, args.gap_max)).run()
    print(json.dumps({"seed": args.seed, **report.figures()}, indent=2))
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
