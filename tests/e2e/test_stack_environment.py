"""What the stack starts inherits an environment fit for cores shared with moto and the handlers."""

from __future__ import annotations

import os
import signal

import pytest

from local_aws.project import stack as stack_module
from local_aws.project.stack import Stack, StackOptions


class Stop(Exception):
    pass


def start_until_moto(monkeypatch, tmp_path) -> None:
    """Start a stack up to the point where it would start moto, then stop (nothing is left running)."""
    def stop_here(self):
        raise Stop

    monkeypatch.setattr(Stack, "_start_moto", stop_here)
    with pytest.raises(Stop):
        Stack(StackOptions(state_dir=tmp_path, ports={"moto": 0, "sagemaker": 0, "api": 0})).start()


def test_openmp_threads_sleep_while_waiting_unless_told_otherwise(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "environ", dict(os.environ))  # the stack writes the Lambda's environment here
    os.environ.pop("OMP_WAIT_POLICY", None)
    start_until_moto(monkeypatch, tmp_path)
    assert os.environ["OMP_WAIT_POLICY"] == stack_module.SHARED_CORES_ENVIRONMENT["OMP_WAIT_POLICY"] == "PASSIVE"

    os.environ["OMP_WAIT_POLICY"] = "ACTIVE"
    start_until_moto(monkeypatch, tmp_path)
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


@pytest.mark.parametrize("setting", ["DEBUGGER_RULES=Overfit,NoSuchRule", "DEBUGGER_RULE_POLICY={veto",
                                     "TUNING_RANGES=[]", "MAX_TRAINING_JOBS=four"])
def test_up_refuses_a_bad_stage_setting_before_it_starts_anything(monkeypatch, tmp_path, capsys, setting):
    from local_aws.__main__ import up
    from chalice_app.config import ConfigError

    def must_not_start(self):
        raise AssertionError("the stack started with a bad setting")

    monkeypatch.setattr(Stack, "start", must_not_start)
    monkeypatch.setattr(signal, "signal", lambda *_: None)  # `up` would take over Ctrl-C for the stack
    name = setting.partition("=")[0]
    with pytest.raises(ConfigError, match=name):
        Stack(StackOptions(state_dir=tmp_path, ports={"moto": 0, "sagemaker": 0, "api": 0},
                           overrides={name: setting.partition("=")[2]}))
    assert up(["--state-dir", str(tmp_path), "--ports", "moto=0,sagemaker=0,api=0", "--set", setting]) != 0
    error = capsys.readouterr().err
    assert "stage 'local'" in error and name in error
