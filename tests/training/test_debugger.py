"""The smdebug hook of the training job: real smdebug, real torch, the digits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from smdebug import modes
from smdebug.trials import create_trial
from torch import nn

from tests.training.debugged_training import digit_mlp, train_digits
from training.debugger import CONFIG_FILE_ENV, DebugSession, apply_numpy2_shim
from training.model import ModelSpec, build_model, split_frozen


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models train fastest on one thread, and the CPU is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def no_sagemaker_config(monkeypatch, tmp_path):
    """Never pick up a real /opt/ml hook config: point smdebug's lookup at nothing."""
    monkeypatch.setenv(CONFIG_FILE_ENV, str(tmp_path / "no-debughookconfig.json"))


def test_numpy2_shim_lets_smdebug_write_tensors():
    from smdebug.core import writer
    from smdebug.core.tfevent import util

    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    apply_numpy2_shim()
    apply_numpy2_shim()  # idempotent: wrapped once
    if hasattr(np.ndarray, "tostring"):
        pytest.skip("numpy 1 still has ndarray.tostring: nothing to shim")
    with pytest.raises(AttributeError, match="tostring"):
        writer.make_tensor_proto.__wrapped__(array, "t")  # smdebug's own code on numpy 2
    assert not getattr(writer.make_tensor_proto.__wrapped__, "numpy2_shim", False)
    for make_tensor_proto in (writer.make_tensor_proto, util.make_tensor_proto):
        proto = make_tensor_proto(array, "t")
        assert proto.tensor_content == array.tobytes()
        assert [d.size for d in proto.tensor_shape.dim] == [2, 3]
    strided = np.arange(12, dtype=np.float64).reshape(3, 4)[:, ::2]  # not contiguous
    assert writer.make_tensor_proto(strided, "s").tensor_content == strided.tobytes()


def test_without_config_or_out_dir_the_session_does_nothing():
    session = DebugSession.create(out_dir=None, modules=nn.Linear(2, 2), loss=nn.CrossEntropyLoss())
    assert not session.enabled and session.out_dir is None
    session.train()
    session.eval()
    session.close()


def test_local_run_writes_train_and_eval_tensors_the_rules_need(tmp_path):
    session = train_digits(tmp_path / "tensors", epochs=2, save_interval=5)
    assert session.out_dir == tmp_path / "tensors"
    trial = create_trial(str(session.out_dir))
    # 12 training batches a pass, saved every 5th step; every validation loss kept.
    assert trial.steps(mode=modes.TRAIN) == [0, 5, 10, 15, 20]
    assert trial.steps(mode=modes.EVAL) == [0, 1]
    for collection in ("losses", "weights", "biases", "gradients", "relu_input"):
        assert trial.tensor_names(collection=collection), collection
    assert trial.tensor_names(regex=".*relu_input") == ["block0.relu_input_0", "block1.relu_input_0"]
    loss = trial.tensor(trial.tensor_names(collection="losses")[0])
    assert loss.steps(mode=modes.EVAL) == [0, 1]
    assert loss.value(1, mode=modes.EVAL) < loss.value(0, mode=modes.EVAL)
    weight = trial.tensor("Sequential_out.weight")
    assert weight.steps(mode=modes.EVAL) == []  # big tensors only for training steps
    assert weight.value(0, mode=modes.TRAIN).shape == (10, 64)


def test_frozen_parameters_get_no_gradient_hook_and_training_runs(tmp_path):
    # The whole ResNet registered, its backbone frozen (smdebug once crashed on these).
    model = build_model(ModelSpec("resnet18", num_classes=10))
    split_frozen(model, "backbone")
    images = torch.randn(8, 3, 32, 32)
    labels = torch.arange(8) % 10
    criterion = nn.CrossEntropyLoss()
    session = DebugSession.create(out_dir=tmp_path / "t", save_interval=1, modules=model, loss=criterion)
    session.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    for _ in range(2):
        loss = criterion(model(images), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    session.close()
    trial = create_trial(str(tmp_path / "t"))
    assert trial.tensor_names(collection="gradients") == ["gradient/ResNet_fc.1.bias", "gradient/ResNet_fc.1.weight"]
    assert "ResNet_conv1.weight" in trial.tensor_names(collection="weights")  # frozen weights are still saved
    assert trial.steps(mode=modes.TRAIN) == [0, 1]


def test_a_trainable_tail_registered_alone_after_a_frozen_trunk(tmp_path):
    # train.py's frozen modes: only the tail is given to the session; the trunk runs before it.
    trunk = nn.Sequential(nn.Linear(64, 32), nn.ReLU()).requires_grad_(False)
    tail = digit_mlp(depth=1)
    tail.block0.fc = nn.Linear(32, 64)
    session = train_digits(tmp_path / "t", epochs=1, model=nn.Sequential(trunk, tail), debug_module=tail,
                           save_interval=4)
    trial = create_trial(str(session.out_dir))
    assert trial.tensor_names(collection="gradients") == [
        "gradient/Sequential_block0.fc.bias", "gradient/Sequential_block0.fc.weight",
        "gradient/Sequential_out.bias", "gradient/Sequential_out.weight"]
    assert trial.steps(mode=modes.TRAIN) == [0, 4, 8]


def test_bfloat16_autocast_tensors_are_saved_as_float32(tmp_path):
    session = train_digits(tmp_path / "t", epochs=1, autocast=True, save_interval=4)
    trial = create_trial(str(session.out_dir))
    relu_input = trial.tensor("block0.relu_input_0").value(0, mode=modes.TRAIN)
    assert relu_input.dtype == np.float32 and relu_input.shape == (100, 64)


def test_close_detaches_the_hook(tmp_path):
    model = digit_mlp()
    criterion = nn.CrossEntropyLoss()
    session = DebugSession.create(out_dir=tmp_path / "t", save_interval=1, modules=model, loss=criterion)
    session.eval()
    with torch.inference_mode():
        criterion(model(torch.zeros(4, 64)), torch.zeros(4, dtype=torch.long))
    session.close()
    with torch.inference_mode():  # e.g. the test set, after training
        criterion(model(torch.zeros(4, 64)), torch.zeros(4, dtype=torch.long))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in [*model.modules(), criterion])
    assert all(not p._backward_hooks for p in model.parameters())
    assert create_trial(str(tmp_path / "t")).steps() == [0]
    session.close()  # twice is harmless


def test_sagemaker_hook_config_json_drives_the_hook(tmp_path, monkeypatch):
    # The file SageMaker writes from the job's DebugHookConfig (smdebug reads LocalPath,
    # HookParameters and CollectionConfigurations).
    config = {
        "S3OutputPath": "s3://bucket/debug-output",
        "LocalPath": str(tmp_path / "opt-ml-output-tensors"),
        "HookParameters": {"save_interval": "6"},
        "CollectionConfigurations": [
            {"CollectionName": "losses", "CollectionParameters": {"save_interval": "2"}},
            {"CollectionName": "gradients", "CollectionParameters": {"save_interval": "3"}},
        ],
    }
    path = tmp_path / "debughookconfig.json"
    path.write_text(json.dumps(config))
    monkeypatch.setenv(CONFIG_FILE_ENV, str(path))
    session = train_digits(None, epochs=1, save_interval=1000)  # the config wins over the argument
    assert session.out_dir == tmp_path / "opt-ml-output-tensors"
    trial = create_trial(str(session.out_dir))
    loss = trial.tensor_names(collection="losses")[0]
    assert trial.tensor(loss).steps(mode=modes.TRAIN) == [0, 2, 4, 6, 8, 10]
    assert trial.tensor("gradient/Sequential_out.weight").steps(mode=modes.TRAIN) == [0, 3, 6, 9]
    # Collections the rules need but the config left out follow HookParameters.
    assert trial.tensor("Sequential_out.weight").steps(mode=modes.TRAIN) == [0, 6]
    assert trial.tensor_names(regex=".*relu_input")
