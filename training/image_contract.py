"""What this project accepts as an image: the one definition every side imports.

The upload API and the manifest read the suffixes, the Lambda reads the byte limit
and the magic bytes before it invokes the endpoint, training and the endpoint decode
the formats (`training.presets.decode_rgb`) within the byte and pixel limits, and the
Lambda groups at most MAX_IMAGES_PER_REQUEST images in one request the endpoint takes.

Standard library only: this file travels in the Lambda zip (vendor/training), in the
training source dir and in the model artefact (`code/training/`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class ImageFormat:
    name: str  # what a person reads
    pillow: str  # Pillow's format name: Image.open(..., formats=[pillow])
    mime: str
    suffixes: tuple[str, ...]
    magic: re.Pattern[bytes]  # matches the file's first HEAD_BYTES


# GIF: its first frame is the image; an animation's other frames are ignored.
FORMATS: tuple[ImageFormat, ...] = (
    ImageFormat("JPEG", "JPEG", "image/jpeg", (".jpg", ".jpeg"), re.compile(rb"\xff\xd8\xff")),
    ImageFormat("PNG", "PNG", "image/png", (".png",), re.compile(rb"\x89PNG\r\n\x1a\n")),
    ImageFormat("GIF", "GIF", "image/gif", (".gif",), re.compile(rb"GIF8[79]a")),
    ImageFormat("BMP", "BMP", "image/bmp", (".bmp",), re.compile(rb"BM")),
    ImageFormat("WebP", "WEBP", "image/webp", (".webp",), re.compile(rb"RIFF.{4}WEBP", re.DOTALL)),
)
SUFFIXES: tuple[str, ...] = tuple(suffix for fmt in FORMATS for suffix in fmt.suffixes)
MIME_TYPES: tuple[str, ...] = tuple(fmt.mime for fmt in FORMATS)
HEAD_BYTES = 16  # enough to tell every format apart

# One image travels alone in one InvokeEndpoint request when it is too big to share one,
# so no image may exceed that request's 6 MiB payload limit.
MAX_IMAGE_BYTES = 6 * 1024 * 1024
# A decompression-bomb guard, checked from the header before any decoding: a 50-megapixel
# photo decodes to 150 MB of RGB; a few-kilobyte PNG can claim far more than that.
MAX_PIXELS = 50_000_000
# Images in one request to the endpoint (the Lambda's groups, the endpoint's 413 beyond).
MAX_IMAGES_PER_REQUEST = 64

NOT_AN_IMAGE = f"not an image: expected one of {', '.join(fmt.name for fmt in FORMATS)}"
EMPTY = "empty image: no bytes"


def sniff(head: bytes) -> ImageFormat | None:
    """The format named by the file's first bytes, or None when it is not an accepted image."""
    return next((fmt for fmt in FORMATS if fmt.magic.match(head[:HEAD_BYTES])), None)


def has_image_suffix(name: str) -> bool:
    return name.lower().endswith(SUFFIXES)


def bytes_refusal(size: int, max_bytes: int = MAX_IMAGE_BYTES) -> str | None:
    if size > max_bytes:
        return f"image too large: {size} bytes, the limit is {max_bytes} bytes"
    return None


def pixels_refusal(width: int, height: int, max_pixels: int = MAX_PIXELS) -> str | None:
    if width * height > max_pixels:
        return f"image too large: {width}x{height} pixels, the limit is {max_pixels} pixels"
    return None


def refusal(data: bytes, max_bytes: int = MAX_IMAGE_BYTES) -> str | None:
    """Why these bytes are not an accepted image, from their size and first bytes alone (no
    decoding: the pixel limit and corrupt data are the decoder's to find); None when they may be."""
    if not data:
        return EMPTY
    too_large = bytes_refusal(len(data), max_bytes)
    if too_large:
        return too_large
    return None if sniff(data) else NOT_AN_IMAGE
