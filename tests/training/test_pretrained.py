"""Starting weights: random, ImageNet (download or channel), or a path; never a silent fallback."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import ResNet18_Weights

from training.model import ModelSpec, build_model
from training.pretrained import PretrainedWeightsError, load_pretrained


def test_no_internet_gives_an_error_naming_the_three_ways(monkeypatch):
    def offline(self, *args, **kwargs):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(type(ResNet18_Weights.IMAGENET1K_V1), "get_state_dict", offline)
    model = build_model(ModelSpec("resnet18", 4))
    with pytest.raises(PretrainedWeightsError) as error:
        load_pretrained(model, "imagenet", "resnet18", None)
    message = str(error.value)
    assert "download" in message and "'weights' channel" in message and "--pretrained none" in message
    assert "resnet18-f37072fd.pth" in message


def test_weights_channel_stands_in_for_the_download(tmp_path):
    donor = build_model(ModelSpec("resnet18", 7))
    torch.save(donor.state_dict(), tmp_path / "resnet18-f37072fd.pth")
    model = build_model(ModelSpec("resnet18", 3))
    origin = load_pretrained(model, "imagenet", "resnet18", tmp_path)
    assert "weights channel" in origin
    assert torch.equal(model.conv1.weight, donor.conv1.weight)
    assert model.fc[1].out_features == 3


def test_weights_of_another_architecture_are_refused(tmp_path):
    torch.save(build_model(ModelSpec("resnet34", 3)).state_dict(), tmp_path / "w.pth")
    with pytest.raises(PretrainedWeightsError, match="do not fit resnet18"):
        load_pretrained(build_model(ModelSpec("resnet18", 3)), str(tmp_path / "w.pth"), "resnet18", None)


def test_missing_weights_file_is_an_error_not_random_init(tmp_path):
    with pytest.raises(PretrainedWeightsError, match="no weights file"):
        load_pretrained(build_model(ModelSpec("resnet18", 3)), str(tmp_path / "nope.pth"), "resnet18", None)
