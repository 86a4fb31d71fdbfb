"""training.presets.decode_rgb: every colour mode and format, and every way bytes go bad."""

from __future__ import annotations

import numpy as np
import pytest

from tests.inference import images
from training.presets import (
    MAX_PIXELS,
    ImageDecodeError,
    ImageInfo,
    ImageTooLargeError,
    decode_rgb,
    probe_image,
    sniff_format,
)


@pytest.mark.parametrize("name, data", sorted(images.variants().items()))
def test_every_variant_decodes_to_pillows_rgb(name, data):
    tensor = decode_rgb(data)
    assert tensor.dtype.is_floating_point is False and tensor.dtype.itemsize == 1
    assert tensor.ndim == 3 and tensor.shape[0] == 3
    assert np.array_equal(tensor.permute(1, 2, 0).numpy(), images.expected_rgb(data)), name


@pytest.mark.parametrize("make", [images.png_16bit_rgb, images.png_16bit_grey])
def test_16_bit_pngs_keep_the_high_byte(make):
    data, expected = make()
    assert np.array_equal(decode_rgb(data).permute(1, 2, 0).numpy(), expected)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_exif_orientation_is_applied(fmt):
    upright = decode_rgb(images.encode(images.rgb_image(), fmt))
    rotated = decode_rgb(images.with_orientation(fmt, orientation=6))  # 6: rotate 90 degrees clockwise
    assert upright.shape[1:] == (48, 64) and rotated.shape[1:] == (64, 48)
    assert np.array_equal(rotated.numpy(), np.rot90(upright.numpy(), k=-1, axes=(1, 2)))


def test_formats_are_sniffed_from_magic_bytes():
    assert sniff_format(images.jpeg()) == "jpeg"
    assert sniff_format(images.png()) == "png"
    assert sniff_format(images.webp()) == "webp"
    assert sniff_format(b"GIF89a" + bytes(20)) is None
    assert probe_image(images.png(30, 40)) == ImageInfo("png", width=40, height=30)


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (b"hello, this is plain text, not an image", "not an image"),
    (images.encode(images.rgb_image(), "GIF"), "not an image"),
    (images.encode(images.rgb_image(), "BMP"), "not an image"),
])
def test_bytes_that_are_not_an_accepted_image(data, message):
    with pytest.raises(ImageDecodeError, match=message):
        decode_rgb(data)


@pytest.mark.parametrize("make", [images.jpeg, images.png, images.webp])
@pytest.mark.parametrize("keep", [0.02, 0.5, 0.95])
def test_truncated_images_are_refused(make, keep):
    data = make(96, 128)
    with pytest.raises(ImageDecodeError):
        decode_rgb(data[: max(12, int(len(data) * keep))])


def test_a_corrupt_png_raises_instead_of_killing_the_process():
    # torchvision's libpng path aborts the process on this file; decode_rgb must raise.
    with pytest.raises(ImageDecodeError, match="corrupt"):
        decode_rgb(images.corrupt_png_idat())


@pytest.mark.parametrize("bomb", [images.png_bomb, images.jpeg_bomb])
def test_pixel_bombs_are_refused_from_the_header(bomb):
    # The bytes hold no decodable pixel data at all: only the header can have been read.
    with pytest.raises(ImageTooLargeError, match="too large"):
        decode_rgb(bomb())


def test_the_pixel_limit_is_checked_before_decoding():
    side = int(MAX_PIXELS ** 0.5) + 1  # just over the limit, under Pillow's own bomb guard
    with pytest.raises(ImageTooLargeError, match=f"{side}x{side} pixels"):
        decode_rgb(images.raw_png(side, side, 8, 2, b"\x00" * 64))
    assert decode_rgb(images.png(20, 30), max_pixels=600).shape == (3, 20, 30)
    with pytest.raises(ImageTooLargeError):
        decode_rgb(images.png(20, 30), max_pixels=599)
