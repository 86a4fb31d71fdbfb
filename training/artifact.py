"""The model artefact, `model.tar.gz`: what it holds and how it is written.

    model.pth             the state_dict (load with weights_only=True)
    classes.json          class names, in output-index order
    model.json            ModelSpec (arch, num_classes, hidden_units, dropout)
    preprocessing.json    the eval preset's parameters (ClassificationPresetEval.to_dict)
    metadata.json         version, training job, hyperparameters, final metrics
    model.onnx            the optimised model (training/optimised.py), only when it agrees with model.pth;
                          with embedding.pt, a second output: the embedding summaries
    drift_reference.json  the test split as the model saw it (training/drift.py: Reference.to_dict)
    embedding.pt          the embedding summary's Projection (training/embedding.py; weights_only tensors)
    code/inference.py     the SageMaker inference handler
    code/requirements.txt its requirements
    code/training/{__init__,image_contract,presets,model,onnx_engine,drift,embedding}.py   the modules inference imports

The last two come from the final job only (`--drift-reference on`): an artefact without them
serves as before, without embedding summaries.

`code/` mirrors the repository's import paths, so `inference.py` imports
`training.presets` the same way in the repo, in the source dir and in the endpoint.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from training.drift import REFERENCE_FILE

REPO_ROOT = Path(__file__).resolve().parent.parent
CODE_FILES = {
    "code/inference.py": REPO_ROOT / "inference" / "inference.py",
    "code/requirements.txt": REPO_ROOT / "inference" / "requirements.txt",
    "code/training/__init__.py": REPO_ROOT / "training" / "__init__.py",
    "code/training/image_contract.py": REPO_ROOT / "training" / "image_contract.py",
    "code/training/presets.py": REPO_ROOT / "training" / "presets.py",
    "code/training/model.py": REPO_ROOT / "training" / "model.py",
    "code/training/onnx_engine.py": REPO_ROOT / "training" / "onnx_engine.py",
    "code/training/drift.py": REPO_ROOT / "training" / "drift.py",
    "code/training/embedding.py": REPO_ROOT / "training" / "embedding.py",
}
WEIGHTS = "model.pth"
CLASSES = "classes.json"
SPEC = "model.json"
PREPROCESSING = "preprocessing.json"
METADATA = "metadata.json"
DRIFT_REFERENCE = REFERENCE_FILE  # training.drift's name for it: the contract, not spelt again here


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def write_model_dir(model_dir: Path, *, state_dict_bytes: bytes, classes: list[str], spec: dict,
                    preprocessing: dict, metadata: dict, drift_reference: dict | None = None) -> None:
    """Write the artefact's files into SM_MODEL_DIR (SageMaker tars that directory)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / WEIGHTS).write_bytes(state_dict_bytes)
    documents = {CLASSES: classes, SPEC: spec, PREPROCESSING: preprocessing, METADATA: metadata}
    if drift_reference is not None:
        documents[DRIFT_REFERENCE] = drift_reference
    for name, payload in documents.items():
        (model_dir / name).write_text(json.dumps(payload, indent=2, sort_keys=True))
    for name, source in CODE_FILES.items():
        if source.exists():
            target = model_dir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())


def pack_model_dir(model_dir: Path, tarball: Path) -> Path:
    """Tar a model directory as SageMaker does (members relative to the directory)."""
    with tarfile.open(tarball, "w:gz") as tar:
        for path in sorted(model_dir.rglob("*")):
            if path.is_file():
                _add_bytes(tar, path.relative_to(model_dir).as_posix(), path.read_bytes())
    return tarball
