"""SageMaker Debugger (smdebug) tensors for the training loop.

    session = DebugSession.create(out_dir=..., save_interval=10, modules=tail, loss=criterion)
    session.train(); ...; session.eval(); ...; session.close()

On SageMaker the hook follows the JSON config SageMaker writes for the job
(smdebug's own lookup: `$SMDEBUG_CONFIG_FILE_PATH`, else
/opt/ml/input/config/debughookconfig.json). In a local run it follows the
arguments. With neither, the session does nothing, at no cost.

Whatever the config says, the collections the rules of `training.rules`
read (losses, weights, biases, gradients, relu_input) are saved.

Four fixes for smdebug 1.0.34 (frozen since 2023), all applied here and nowhere else:
- its generated protobuf code predates protobuf 4, and the images keep protobuf 6: importing
  this module chooses protobuf's pure-Python implementation, before smdebug imports protobuf;
- numpy 2 removed `ndarray.tostring`, which smdebug's writer calls: arrays reach
  the writer as a view that answers it (`apply_numpy2_shim`);
- bfloat16 tensors (autocast on a GPU) have no numpy type: they are saved as float32;
- `close()` removes the hook's callbacks, so a forward pass after training (the
  test set) does not write more steps into the finished run.
Frozen parameters get no gradient hook (smdebug fixed its crash on tensors that need
no gradient in 0.7.2, awslabs/sagemaker-debugger#193); the tests keep that true.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

# smdebug 1.0.34's generated protobuf code predates protobuf 4. The images keep protobuf 6
# (sagemaker-training needs >= 5.28), which runs such code in its pure-Python implementation
# only, and that is chosen once, when protobuf is first imported: before smdebug imports it.
PURE_PYTHON_PROTOBUF = os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python") == "python"

RULE_COLLECTIONS = ("losses", "weights", "biases", "gradients", "relu_input")
# The regex AWS's PoorWeightInitialization rule saves for its activation inputs.
RELU_INPUT_REGEX = ".*relu_input"
# smdebug's own names (smdebug.core.config_constants), repeated so that a run with
# no Debugger never imports smdebug.
CONFIG_FILE_ENV = "SMDEBUG_CONFIG_FILE_PATH"
DEFAULT_CONFIG_FILE = "/opt/ml/input/config/debughookconfig.json"
LOSS_INTERVAL = 10


class _ArrayWithToString(np.ndarray):
    """An ndarray view that still answers numpy 1's `tostring()`."""

    def tostring(self, order: str = "C") -> bytes:  # noqa: D401 - numpy's own name
        return self.tobytes(order)


def _answering_tostring(make_tensor_proto):
    @functools.wraps(make_tensor_proto)
    def wrapper(nparray_data, tag):
        if isinstance(nparray_data, np.ndarray) and not hasattr(nparray_data, "tostring"):
            nparray_data = nparray_data.view(_ArrayWithToString)
        return make_tensor_proto(nparray_data, tag)

    wrapper.numpy2_shim = True
    return wrapper


def apply_numpy2_shim() -> None:
    """Let smdebug's event writer run on numpy 2 (idempotent; no-op on numpy 1)."""
    if hasattr(np.ndarray, "tostring"):
        return
    from smdebug.core import writer
    from smdebug.core.tfevent import util

    # writer.py imported the function by name: both references must change.
    for module in (util, writer):
        if not getattr(module.make_tensor_proto, "numpy2_shim", False):
            module.make_tensor_proto = _answering_tostring(module.make_tensor_proto)


def hook_config_path() -> Path | None:
    """The SageMaker Debugger hook config of this job, where smdebug would look for it."""
    path = Path(os.environ.get(CONFIG_FILE_ENV, DEFAULT_CONFIG_FILE))
    return path if path.is_file() else None


def _hook_class():
    from smdebug.pytorch import Hook

    class _Hook(Hook):
        @staticmethod
        def _make_numpy_array(tensor_value):
            if isinstance(tensor_value, torch.Tensor) and tensor_value.dtype == torch.bfloat16:
                tensor_value = tensor_value.float()
            return Hook._make_numpy_array(tensor_value)

    return _Hook


def _local_hook(out_dir: Path, save_interval: int):
    from smdebug.core.modes import ModeKeys
    from smdebug.core.save_config import SaveConfig, SaveConfigMode

    if save_interval < 1:
        raise ValueError(f"the debug save interval must be at least 1, not {save_interval}")
    every = SaveConfigMode(save_interval=save_interval)
    never = SaveConfigMode(save_interval=1, end_step=0)
    hook = _hook_class()(
        out_dir=str(out_dir),
        save_config=SaveConfig(mode_save_configs={ModeKeys.TRAIN: every, ModeKeys.EVAL: every}),
        include_collections=list(RULE_COLLECTIONS),
    )
    # Losses are scalars: keep every validation one, so Overfit/Overtraining see each
    # pass, and a training one at least every LOSS_INTERVAL steps for LossNotDecreasing.
    # Weights and gradients (~90 MB a step for a ResNet-18) follow the save interval.
    hook.get_collection("losses").save_config = {
        ModeKeys.TRAIN: SaveConfigMode(save_interval=min(save_interval, LOSS_INTERVAL)),
        ModeKeys.EVAL: SaveConfigMode(save_interval=1)}
    for name in ("weights", "biases", "relu_input"):
        hook.get_collection(name).save_config = {ModeKeys.TRAIN: every, ModeKeys.EVAL: never}
    return hook


def _hook_from_config(path: Path):
    hook = _hook_class().create_from_json_file(str(path))
    missing = [name for name in RULE_COLLECTIONS if name not in hook.include_collections]
    hook.include_collections.extend(missing)
    return hook


def _remove_callbacks(hook, modules: Iterable[nn.Module]) -> None:
    """Detach every callback `hook` registered (smdebug keeps no handles)."""

    def ours(fn) -> bool:
        if getattr(fn, "__self__", None) is hook:
            return True
        cells = getattr(fn, "__closure__", None) or ()
        return any(_cell_is(cell, hook) for cell in cells)

    for module in modules:
        for hooks in (module._forward_pre_hooks, module._forward_hooks):
            for key in [k for k, fn in hooks.items() if ours(fn)]:
                del hooks[key]
        for parameter in module.parameters(recurse=False):
            backward = parameter._backward_hooks
            if backward:
                for key in [k for k, fn in backward.items() if ours(fn)]:
                    del backward[key]


def _cell_is(cell, value) -> bool:
    try:
        return cell.cell_contents is value
    except ValueError:  # an empty cell
        return False


@dataclass
class DebugSession:
    """smdebug's hook around the trainable module and the loss, or nothing at all."""

    hook: object | None = None
    out_dir: Path | None = None

    @classmethod
    def create(
        cls,
        out_dir: Path | str | None = None,
        save_interval: int = 10,
        modules: nn.Module | Iterable[nn.Module] = (),
        loss: nn.Module | None = None,
    ) -> "DebugSession":
        config = hook_config_path()
        if config is None and not out_dir:
            return cls()
        apply_numpy2_shim()
        hook = _hook_from_config(config) if config is not None else _local_hook(Path(out_dir), save_interval)
        # smdebug names a module's inputs `<module path>_input_<i>`: ResNet's ReLUs match.
        hook.get_collection("relu_input").include(RELU_INPUT_REGEX)
        for module in [modules] if isinstance(modules, nn.Module) else modules:
            hook.register_module(module)
        if loss is not None:
            hook.register_loss(loss)
        return cls(hook, Path(hook.out_dir))

    @property
    def enabled(self) -> bool:
        return self.hook is not None

    def train(self) -> None:
        self._set_mode("TRAIN")

    def eval(self) -> None:
        self._set_mode("EVAL")

    def _set_mode(self, name: str) -> None:
        if self.hook is not None:
            from smdebug.core.modes import ModeKeys

            self.hook.set_mode(ModeKeys[name])

    def close(self) -> None:
        """Write the last step and the end-of-job marker; later passes are not recorded."""
        if self.hook is None:
            return
        hook, self.hook = self.hook, None
        hook.close()
        _remove_callbacks(hook, list(hook.module_set))
