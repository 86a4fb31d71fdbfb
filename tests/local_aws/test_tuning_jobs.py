"""Tuning jobs through boto3, with the stand-in script (fast): every strategy, limits, early stopping."""

from __future__ import annotations

import threading

import pytest

from .conftest import wait_for
from .sagemaker_requests import tuning_request

DONE = ("Completed", "Failed", "Stopped")


def run(sm, request, timeout=120):
    sm.create_hyper_parameter_tuning_job(**request)
    name = request["HyperParameterTuningJobName"]
    tuning = wait_for(lambda: sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name),
                      "HyperParameterTuningJobStatus", DONE, timeout=timeout)
    children = sm.list_training_jobs_for_hyper_parameter_tuning_job(
        HyperParameterTuningJobName=name, MaxResults=100)["TrainingJobSummaries"]
    return tuning, children


def check_best(tuning, children):
    scored = [c for c in children if c.get("ObjectiveStatus") == "Succeeded"]
    best = max(scored, key=lambda c: c["FinalHyperParameterTuningJobObjectiveMetric"]["Value"])
    assert tuning["BestTrainingJob"]["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] == \
        best["FinalHyperParameterTuningJobObjectiveMetric"]["Value"]
    assert tuning["BestTrainingJob"]["TunedHyperParameters"].keys() == best["TunedHyperParameters"].keys()


@pytest.mark.parametrize("strategy", ["Random", "Bayesian"])
def test_a_search_runs_its_trials_and_reports_the_best(sm, bucket, tiny_source, service, strategy):
    request = tuning_request(bucket, tiny_source, strategy, max_jobs=4, parallel=2)
    tuning, children = run(sm, request)

    assert tuning["HyperParameterTuningJobStatus"] == "Completed"
    assert len(children) == 4
    assert tuning["TrainingJobStatusCounters"] == {"Completed": 4, "InProgress": 0, "RetryableError": 0,
                                                   "NonRetryableError": 0, "Stopped": 0}
    assert tuning["ObjectiveStatusCounters"] == {"Succeeded": 4, "Pending": 0, "Failed": 0}
    check_best(tuning, children)
    for child in children:
        assert child["TrainingJobName"].startswith(request["HyperParameterTuningJobName"] + "-")
        assert 0.001 <= float(child["TunedHyperParameters"]["lr"]) <= 1.0
        described = sm.describe_training_job(TrainingJobName=child["TrainingJobName"])
        assert described["TuningJobArn"] == tuning["HyperParameterTuningJobArn"]
        assert described["HyperParameters"]["epochs"] == "3"
    # MaxParallelTrainingJobs: never more than 2 children in Training at once.
    spans = []
    for child in children:
        transitions = sm.describe_training_job(TrainingJobName=child["TrainingJobName"])["SecondaryStatusTransitions"]
        spans.append((transitions[0]["StartTime"], transitions[-1]["StartTime"]))
    for start, _ in spans:
        assert sum(s <= start < e for s, e in spans) <= 2


def test_grid_tries_every_point_once(sm, bucket, tiny_source):
    ranges = {"CategoricalParameterRanges": [{"Name": "optimizer", "Values": ["sgd", "adam"]},
                                             {"Name": "lr", "Values": ["0.01", "0.1"]}]}
    tuning, children = run(sm, tuning_request(bucket, tiny_source, "Grid", max_jobs=10, ranges=ranges))

    assert tuning["HyperParameterTuningJobStatus"] == "Completed"
    points = sorted((c["TunedHyperParameters"]["optimizer"], c["TunedHyperParameters"]["lr"]) for c in children)
    assert points == [("adam", "0.01"), ("adam", "0.1"), ("sgd", "0.01"), ("sgd", "0.1")]
    assert tuning["BestTrainingJob"]["TunedHyperParameters"] == {"optimizer": "adam", "lr": "0.1"}


def test_hyperband_stops_poor_trials_early_from_their_epoch_lines(sm, bucket, tiny_source):
    # One trial at a time and a seed: which trials are stopped depends on their values only, never
    # on how fast the machine runs them (a stop is marked on the epoch line that decides it).
    request = tuning_request(bucket, tiny_source, "Hyperband", max_jobs=8, parallel=1, static={"epochs": "9"},
                             StrategyConfig={"HyperbandStrategyConfig": {"MinResource": 1, "MaxResource": 9}})
    request["HyperParameterTuningJobConfig"]["RandomSeed"] = 3
    tuning, children = run(sm, request, timeout=180)

    assert tuning["HyperParameterTuningJobStatus"] == "Completed"
    assert len(children) == 8
    counters = tuning["TrainingJobStatusCounters"]
    assert (counters["Completed"], counters["Stopped"]) == (5, 3)
    # The seed decides which: the same three trials on every run, on any machine.
    order = sorted(children, key=lambda c: c["TrainingJobName"][len(request["HyperParameterTuningJobName"]):])
    assert [c["TrainingJobStatus"] for c in order] == ["Completed"] * 3 + ["Stopped"] + ["Completed"] * 2 + ["Stopped"] * 2
    stopped = [c for c in children if c["TrainingJobStatus"] == "Stopped"]
    assert all(c["ObjectiveStatus"] == "Succeeded" for c in stopped)  # their last reported value counts
    check_best(tuning, children)


def test_a_tuning_job_whose_trials_all_fail_is_failed_with_their_reason(sm, bucket, tiny_source):
    request = tuning_request(bucket, tiny_source, "Random", max_jobs=2, static={"fail": "yes"})
    tuning, children = run(sm, request)

    assert tuning["HyperParameterTuningJobStatus"] == "Failed"
    assert "no images of class 7" in tuning["FailureReason"]
    assert tuning["ObjectiveStatusCounters"]["Failed"] == 2
    assert tuning["TrainingJobStatusCounters"]["NonRetryableError"] == 2
    assert "BestTrainingJob" not in tuning


def test_bad_configs_are_rejected_before_anything_runs(sm, bucket, tiny_source):
    request = tuning_request(bucket, tiny_source, "Random")
    request["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]["MetricName"] = "valid:f1"
    with pytest.raises(sm.exceptions.ClientError, match="ValidationException.*valid:f1"):
        sm.create_hyper_parameter_tuning_job(**request)
    grid = tuning_request(bucket, tiny_source, "Grid")  # a continuous range cannot be gridded
    with pytest.raises(sm.exceptions.ClientError, match="Grid"):
        sm.create_hyper_parameter_tuning_job(**grid)
    with pytest.raises(sm.exceptions.ResourceNotFound):
        sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName="nope")


def test_stop_stops_the_running_trials(sm, bucket, tiny_source):
    request = tuning_request(bucket, tiny_source, "Random", max_jobs=6, static={"epochs": "200", "sleep": "0.1"})
    name = request["HyperParameterTuningJobName"]
    sm.create_hyper_parameter_tuning_job(**request)
    wait_for(lambda: sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)["TrainingJobStatusCounters"],
             "InProgress", (1, 2))
    sm.stop_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
    tuning = wait_for(lambda: sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name),
                      "HyperParameterTuningJobStatus", DONE, timeout=60)
    assert tuning["HyperParameterTuningJobStatus"] == "Stopped"
    assert tuning["TrainingJobStatusCounters"]["InProgress"] == 0
    assert sum(tuning["TrainingJobStatusCounters"].values()) < 6


def test_a_waiting_tuner_wakes_when_a_job_changes_not_on_its_timer(sm, bucket, tiny_source, service):
    seen = service.backend.state.changes_seen()
    waiter = threading.Thread(target=service.backend.state.wait_for_change, args=(seen, 300), daemon=True)
    waiter.start()
    request = tuning_request(bucket, tiny_source, "Random", max_jobs=1, parallel=1)
    run(sm, request)
    waiter.join(60)
    assert not waiter.is_alive()  # woken by the jobs' changes, long before its 300 s
