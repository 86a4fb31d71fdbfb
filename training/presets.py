"""Image decoding and the train/eval transforms, as named classes that everything reuses.

Training builds its eval transform from these classes and saves its parameters in the
model artefact (`preprocessing.json`); serving rebuilds the very same class from that
file, so an image gives the same tensor in both places. Only torch, torchvision and
torchvision's own dependencies (Pillow, numpy) are imported here, with the standard-library
`training.image_contract` (what an accepted image is): both travel inside `model.tar.gz`
(`code/training/`).
"""

from __future__ import annotations

import io
import zlib
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from training.image_contract import (
    EMPTY,
    MAX_IMAGE_BYTES,
    MAX_PIXELS,
    NOT_AN_IMAGE,
    ImageFormat,
    bytes_refusal,
    pixels_refusal,
    sniff,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Decoded by Pillow rather than torchvision: libpng errors inside torchvision's decode_png
# (a bad IDAT CRC, a broken zlib stream) kill the whole process where Pillow raises; its
# decode_gif returns every frame, and it reads no BMP at all.
_PILLOW_DECODES = {"PNG", "GIF", "BMP"}


class ImageDecodeError(ValueError):
    """The bytes are not an image this project can decode."""


class ImageTooLargeError(ImageDecodeError):
    """The image is over the byte limit, or its header claims more pixels than the limit allows."""


@dataclass(frozen=True)
class ImageInfo:
    format: ImageFormat
    width: int
    height: int


def probe_image(data: bytes, max_bytes: int | None = MAX_IMAGE_BYTES) -> ImageInfo:
    """Format and size read from the header alone; nothing is decoded."""
    if not data:
        raise ImageDecodeError(EMPTY)
    too_large = bytes_refusal(len(data), max_bytes) if max_bytes is not None else None
    if too_large:
        raise ImageTooLargeError(too_large)
    image_format = sniff(data)
    if image_format is None:
        raise ImageDecodeError(NOT_AN_IMAGE)
    try:
        # Pillow's open() parses the header lazily and decodes nothing until load().
        with Image.open(io.BytesIO(data), formats=[image_format.pillow]) as image:
            width, height = image.size
    except Image.DecompressionBombError as error:
        raise ImageTooLargeError(f"image too large: {error}") from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageDecodeError(f"truncated or corrupt {image_format.name} header: {error}") from error
    return ImageInfo(image_format, width, height)


def _decode_with_pillow(data: bytes, pillow_format: str) -> torch.Tensor:
    with Image.open(io.BytesIO(data), formats=[pillow_format]) as image:  # a GIF opens at its first frame
        image = ImageOps.exif_transpose(image)
        if image.mode in ("I", "I;16", "I;16B", "I;16L"):  # 16-bit grey: keep the high byte
            grey = (np.asarray(image).astype(np.int64) >> 8).clip(0, 255).astype(np.uint8)
            rgb = np.repeat(grey[:, :, None], 3, axis=2)
        else:  # RGBA, LA, P (with or without transparency), L, 1, 16-bit RGB: alpha dropped
            rgb = np.asarray(image.convert("RGB"))
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))


def decode_rgb(data: bytes, max_pixels: int | None = MAX_PIXELS,
               max_bytes: int | None = MAX_IMAGE_BYTES) -> torch.Tensor:
    """Decode an accepted image (image_contract.FORMATS; a GIF's first frame) to a uint8 RGB
    tensor (3, H, W).

    Grey, palette, CMYK, alpha and 16-bit images all come out as 8-bit RGB (alpha
    dropped, as Pillow's convert("RGB") does); EXIF orientation is applied. The byte size
    and the pixel count (from the header) are checked before decoding (ImageTooLargeError).
    """
    info = probe_image(data, max_bytes)
    too_large = pixels_refusal(info.width, info.height, max_pixels) if max_pixels is not None else None
    if too_large:
        raise ImageTooLargeError(too_large)
    try:
        if info.format.pillow in _PILLOW_DECODES:
            return _decode_with_pillow(data, info.format.pillow)
        buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        image = decode_image(buffer, mode=ImageReadMode.RGB, apply_exif_orientation=True)
    except (RuntimeError, ValueError, OSError, SyntaxError, EOFError, zlib.error) as error:
        raise ImageDecodeError(f"truncated or corrupt {info.format.name} image: {error}") from error
    if image.dtype != torch.uint8:
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
