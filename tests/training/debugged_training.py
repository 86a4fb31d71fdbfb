"""A tiny MLP trained on scikit-learn's digits through a DebugSession, as train.py trains: what the
Debugger tests and the rule tests watch."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

from training.debugger import DebugSession


def digit_splits(n_train: int = 1200) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    images, labels = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(labels))
    x = torch.tensor(images[order] / 16.0, dtype=torch.float32)
    y = torch.tensor(labels[order])
    return (x[:n_train], y[:n_train]), (x[1200:1500], y[1200:1500])


def digit_mlp(depth: int = 2, hidden: int = 64, init_scale: float | None = None) -> nn.Sequential:
    """Blocks named like ResNet's, so smdebug calls the activation inputs `block<i>.relu_input_0`."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    width = 64
    for i in range(depth):
        layers[f"block{i}"] = nn.Sequential(OrderedDict(fc=nn.Linear(width, hidden), relu=nn.ReLU()))
        width = hidden
    layers["out"] = nn.Linear(width, 10)
    model = nn.Sequential(layers)
    if init_scale is not None:  # a deliberately poor initialisation
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.mul_(init_scale)
    return model


def train_digits(out_dir: Path | None, *, epochs: int = 3, optimizer: str = "adam", lr: float = 1e-3,
                 depth: int = 2, init_scale: float | None = None, n_train: int = 1200, batch_size: int = 100,
                 save_interval: int = 10, model: nn.Module | None = None, debug_module: nn.Module | None = None,
                 autocast: bool = False, validate: bool = True) -> DebugSession:
    """Train on the digits through a DebugSession, as train.py does: TRAIN steps, then one
    validation batch per epoch in EVAL mode. Returns the closed session."""
    torch.manual_seed(0)
    (x, y), (x_valid, y_valid) = digit_splits(n_train)
    model = model or digit_mlp(depth, init_scale=init_scale)
    criterion = nn.CrossEntropyLoss()
    session = DebugSession.create(out_dir=out_dir, save_interval=save_interval, modules=debug_module or model,
                                  loss=criterion)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = (torch.optim.Adam(trainable, lr=lr) if optimizer == "adam"
           else torch.optim.SGD(trainable, lr=lr, momentum=0.9))
    for _ in range(epochs):
        session.train()
        model.train()
        for batch in torch.randperm(len(y)).split(batch_size):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                loss = criterion(model(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if not validate:
            continue
        session.eval()
        model.eval()
        with torch.inference_mode():
            criterion(model(x_valid), y_valid)
    session.close()
    return session
