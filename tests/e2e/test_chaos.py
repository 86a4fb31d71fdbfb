"""The chaos run's short form: a few seeded SIGKILLs of random components while the pipeline
trains and serves; every invariant holds (`local_aws.project.chaos`). The long form, with
figures, also kills during a blue/green update (run 2): `python bench/chaos.py --kills 20`.
The update alone is tested in tests/app/test_deployment.py; the short form leaves it out,
as it would take a second training run."""

from __future__ import annotations

import json

import pytest

from local_aws.project.chaos import ChaosRun

pytestmark = pytest.mark.slow


def test_a_few_random_kills_lose_nothing_and_leave_nothing_stuck(tmp_path, digits_labels):
    report = ChaosRun(tmp_path, digits_labels, kills=3, seed=15, gap_seconds=(15.0, 45.0),
                      update=False).run()
    figures = report.figures()
    print(json.dumps(figures, indent=2))
    assert not report.failures, f"{figures} (log: {tmp_path / 'stack.log'})"
    assert len(report.kills) == 3, figures
