"""Image decoding and the train/eval transforms, as named classes that everything reuses.

Training builds its eval transform from these classes and saves its parameters in the
model artefact (`preprocessing.json`); serving rebuilds the very same class from that
file, so an image gives the same tensor in both places. Only torch and torchvision are
imported here: this module travels inside `model.tar.gz` (`code/training/presets.py`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageDecodeError(ValueError):
    """The bytes are not an image this project can decode."""


def decode_rgb(data: bytes) -> torch.Tensor:
    """Decode image bytes to a uint8 RGB tensor (3, H, W), EXIF orientation applied."""
    if not data:
        raise ImageDecodeError("empty image")
    buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    try:
        image = decode_image(buffer, mode=ImageReadMode.RGB, apply_exif_orientation=True)
    except (RuntimeError, ValueError) as error:
        raise ImageDecodeError(f"cannot decode image: {error}") from error
    if image.dtype != torch.uint8:  # 16-bit PNGs decode to uint16
        image = (image.to(torch.int32) >> 8).to(torch.uint8)
    return image


def _interpolation(name: str) -> InterpolationMode:
    return InterpolationMode(name)


@dataclass(frozen=True)
class ClassificationPresetEval:
    """Resize the short side, centre-crop, scale to [0, 1], normalise."""

    crop_size: int = 224
    resize_size: int = 256
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"
    _transform: T.Compose = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        transform = T.Compose(
            [
                T.Resize(self.resize_size, interpolation=_interpolation(self.interpolation), antialias=True),
                T.CenterCrop(self.crop_size),
                T.ToDtype(torch.float32, scale=True),
                T.Normalize(mean=list(self.mean), std=list(self.std)),
            ]
        )
        object.__setattr__(self, "_transform", transform)

    @classmethod
    def for_image_size(cls, image_size: int) -> "ClassificationPresetEval":
        # torchvision's ratio: resize to 256/224 of the crop, then crop.
        return cls(crop_size=image_size, resize_size=round(image_size * 256 / 224))

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self._transform(image)

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("_transform", None)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return {"preset": type(self).__name__, **data}

    @classmethod
    def from_dict(cls, data: dict) -> "ClassificationPresetEval":
        if data.get("preset", cls.__name__) != cls.__name__:
            raise ValueError(f"unknown preprocessing preset {data.get('preset')!r}")
        return cls(
            crop_size=int(data["crop_size"]),
            resize_size=int(data["resize_size"]),
            mean=tuple(float(v) for v in data["mean"]),
            std=tuple(float(v) for v in data["std"]),
            interpolation=str(data.get("interpolation", "bilinear")),
        )


@dataclass(frozen=True)
class ClassificationPresetTrain:
    """Random resized crop, optional horizontal flip, scale, normalise."""

    crop_size: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    hflip_prob: float = 0.5
    min_scale: float = 0.5
    interpolation: str = "bilinear"
    _transform: T.Compose = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        steps: list = [
            T.RandomResizedCrop(
                self.crop_size,
                scale=(self.min_scale, 1.0),
                interpolation=_interpolation(self.interpolation),
                antialias=True,
            )
        ]
        if self.hflip_prob > 0:
            steps.append(T.RandomHorizontalFlip(self.hflip_prob))
        steps += [T.ToDtype(torch.float32, scale=True), T.Normalize(mean=list(self.mean), std=list(self.std))]
        object.__setattr__(self, "_transform", T.Compose(steps))

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self._transform(image)
