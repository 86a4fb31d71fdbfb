"""training.presets.decode_rgb: every colour mode and format, and every way bytes go bad."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.inference import images
from training import image_contract
from training.image_contract import MAX_IMAGE_BYTES, MAX_PIXELS, NOT_AN_IMAGE
from training.presets import ImageDecodeError, ImageInfo, ImageTooLargeError, decode_rgb, probe_image


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
    made = {"JPEG": images.jpeg(), "PNG": images.png(), "WebP": images.webp(), "GIF": images.gif(),
            "BMP": images.bmp()}
    assert {name: image_contract.sniff(data).name for name, data in made.items()} == {name: name for name in made}
    assert image_contract.sniff(b"GIF88a" + bytes(20)) is None and image_contract.sniff(b"II*\0") is None
    png_format = image_contract.sniff(images.png())
    assert probe_image(images.png(30, 40)) == ImageInfo(png_format, width=40, height=30)


@pytest.mark.parametrize("make", [images.gif, images.bmp, images.bmp_palette, images.animated_gif])
def test_gif_and_bmp_decode_to_pillows_rgb_conversion(make):
    data = make()
    tensor = decode_rgb(data)
    assert tensor.dtype == torch.uint8 and tensor.shape == (3, 48, 64)
    assert np.array_equal(tensor.permute(1, 2, 0).numpy(), images.expected_rgb(data))


def test_an_animated_gif_is_its_first_frame():
    first, second = images.animated_gif_frames()
    decoded = decode_rgb(images.animated_gif()).permute(1, 2, 0).numpy()
    assert np.array_equal(decoded, first) and not np.array_equal(decoded, second)


@pytest.mark.parametrize("data, message", [
    (b"", "empty image: no bytes"),
    (b"hello, this is plain text, not an image", "not an image: expected one of JPEG, PNG, GIF, BMP, WebP"),
    (images.encode(images.rgb_image(), "TIFF"), NOT_AN_IMAGE),
], ids=["empty", "text", "tiff"])
def test_bytes_that_are_not_an_accepted_image(data, message):
    with pytest.raises(ImageDecodeError) as raised:
        decode_rgb(data)
    assert str(raised.value) == message


def test_an_image_over_the_byte_limit_is_refused_before_decoding():
    data = images.png() + bytes(MAX_IMAGE_BYTES)  # a valid header; the padding is never read
    with pytest.raises(ImageTooLargeError, match=f"image too large: {len(data)} bytes, the limit is {MAX_IMAGE_BYTES}"):
        decode_rgb(data)
    assert decode_rgb(images.png(20, 30), max_bytes=len(images.png(20, 30))).shape == (3, 20, 30)


@pytest.mark.parametrize("make", [images.jpeg, images.png, images.webp, images.gif, images.bmp])
@pytest.mark.parametrize("keep", [0.02, 0.5, 0.95])
def test_truncated_images_are_refused(make, keep):
    data = make(96, 128)
    with pytest.raises(ImageDecodeError):
        decode_rgb(data[: max(12, int(len(data) * keep))])


def test_a_corrupt_png_raises_instead_of_killing_the_process():
    # torchvision's libpng path aborts the process on this file; decode_rgb must raise.
    with pytest.raises(ImageDecodeError, match="corrupt"):
        decode_rgb(images.corrupt_png_idat())


@pytest.mark.parametrize("bomb", [images.png_bomb, images.jpeg_bomb, images.gif_bomb, images.bmp_bomb])
def test_pixel_bombs_are_refused_from_the_header(bomb):
    # The bytes hold no decodable pixel data at all: only the header can have been read.
    with pytest.raises(ImageTooLargeError, match="too large"):
        decode_rgb(bomb())


def test_the_pixel_limit_is_checked_before_decoding():
    side = int(MAX_PIXELS ** 0.5) + 1  # just over the limit, under Pillow's own bomb guard
    with pytest.raises(ImageTooLargeError, match=f"{side}x{side} pixels"):
        decode_rgb(images.raw_png(side, side, 8, 2, b"\x00" * 64))
    for claims_too_many in (images.gif_bomb(side), images.bmp_bomb(side)):
        with pytest.raises(ImageTooLargeError, match=f"{side}x{side} pixels"):
            decode_rgb(claims_too_many)
    assert decode_rgb(images.png(20, 30), max_pixels=600).shape == (3, 20, 30)
    with pytest.raises(ImageTooLargeError):
        decode_rgb(images.png(20, 30), max_pixels=599)
