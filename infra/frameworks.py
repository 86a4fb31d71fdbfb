"""The SageMaker framework images the product deploys to, and exactly what they hold.

One place for these facts: `infra.images` resolves the image URIs from them, the
conformance check (`conformance/`) builds environments with exactly these packages,
and the README quotes them. The versions are the newest PyTorch images that the
pinned SageMaker SDK resolves (its `image_uri_config/pytorch.json`); the packages are
read from AWS's published Dockerfiles (aws/deep-learning-containers):

- training: `pytorch/training/docker/2.8/py3/Dockerfile.cpu`, stage `sagemaker`. It pins
  Python 3.12.10, torch 2.8.0 and torchvision 0.23.0 (CPU builds); numpy stays at 1.26.4
  ("sagemaker doesn't support latest numpy"); the rest it installs unpinned, so the
  versions below are what pip resolves for that list with those pins.
- inference: `pytorch/inference/docker/2.6/py3/Dockerfile.cpu` and its
  `Dockerfile.sagemaker.cpu.core_packages.json`: Python 3.12.12, torch 2.6.0+cpu,
  torchvision 0.21.0+cpu, TorchServe 0.12.0, sagemaker-pytorch-inference 2.0.25.

Neither image has smdebug (the 2.x images dropped it) nor aws-lambda-powertools: the
training source brings smdebug in its own `requirements.txt` (training/requirements.txt).
"""

from __future__ import annotations

from dataclasses import dataclass, field

SAGEMAKER_SDK = "2.257.7"  # requirements-dev.txt pins the same


@dataclass(frozen=True)
class FrameworkImage:
    scope: str  # "training" | "inference", the SDK's image_scope
    framework_version: str
    py_version: str
    python: str  # the interpreter's minor version
    # What the image runs: the toolkit's module for training, the serving module for inference.
    module: str
    packages: dict[str, str] = field(default_factory=dict)

    def requirements(self) -> list[str]:
        return [f"{name}=={version}" for name, version in self.packages.items()]


TRAINING = FrameworkImage(
    scope="training",
    framework_version="2.8.0",
    py_version="py312",
    python="3.12",
    module="sagemaker_pytorch_container.training:main",
    packages={
        "torch": "2.8.0",
        "torchvision": "0.23.0",
        "numpy": "1.26.4",
        "sagemaker-training": "5.1.4",
        "sagemaker-pytorch-training": "3.0.0",
        "sagemaker": SAGEMAKER_SDK,
        "protobuf": "6.33.6",
        "boto3": "1.44.8",
        "pandas": "3.0.6",
        "scikit-learn": "1.9.1",
        "scipy": "1.17.1",
        "seaborn": "0.13.2",
        "matplotlib": "3.11.2",
        "psutil": "7.2.2",
        "pillow": "13.0.0",
        "requests": "2.34.2",
        "pyyaml": "6.0.4",
    },
)

INFERENCE = FrameworkImage(
    scope="inference",
    framework_version="2.6.0",
    py_version="py312",
    python="3.12",
    module="sagemaker_pytorch_serving_container.serving:main",
    packages={
        "torch": "2.6.0",
        "torchvision": "0.21.0",
        "numpy": "1.26.4",
        "torchserve": "0.12.0",
        "torch-model-archiver": "0.12.0",
        "sagemaker-pytorch-inference": "2.0.25",
        "pillow": "13.0.0",
        "pyyaml": "6.0.4",
        "boto3": "1.44.8",
        "pandas": "3.0.6",
        "scikit-learn": "1.9.1",
        "setuptools": "81.0.0",
    },
)

IMAGES = {image.scope: image for image in (TRAINING, INFERENCE)}
