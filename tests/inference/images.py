"""Image bytes of every kind the endpoint must handle, made with Pillow."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

EXIF_ORIENTATION = 0x0112


def pixels(height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """Smooth RGB with noise: survives JPEG, and any flip or crop changes it."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), (x * y) % 256], axis=2)
    return np.clip(rgb + rng.integers(-20, 20, rgb.shape), 0, 255).astype(np.uint8)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def rgb_image(height: int = 48, width: int = 64) -> Image.Image:
    return Image.fromarray(pixels(height, width))


def jpeg(height: int = 48, width: int = 64) -> bytes:
    return encode(rgb_image(height, width), "JPEG", quality=95)


def png(height: int = 48, width: int = 64) -> bytes:
    return encode(rgb_image(height, width), "PNG")


def webp(height: int = 48, width: int = 64) -> bytes:
    return encode(rgb_image(height, width), "WEBP", lossless=True)


def gif(height: int = 48, width: int = 64) -> bytes:
    return encode(rgb_image(height, width), "GIF")


def bmp(height: int = 48, width: int = 64) -> bytes:
    return encode(rgb_image(height, width), "BMP")


def bmp_palette(height: int = 48, width: int = 64) -> bytes:
    return encode(rgb_image(height, width).convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "BMP")


def animated_gif_frames(height: int = 48, width: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Two solid frames (exact in a GIF's palette): red, then blue."""
    return (np.full((height, width, 3), (255, 0, 0), np.uint8), np.full((height, width, 3), (0, 0, 255), np.uint8))


def animated_gif(height: int = 48, width: int = 64) -> bytes:
    first, second = (Image.fromarray(frame) for frame in animated_gif_frames(height, width))
    return encode(first, "GIF", save_all=True, append_images=[second], duration=100, loop=0)


def with_orientation(fmt: str, orientation: int = 6) -> bytes:
    image = rgb_image()
    exif = image.getexif()
    exif[EXIF_ORIENTATION] = orientation
    return encode(image, fmt, exif=exif.tobytes())


def raw_png(width: int, height: int, bit_depth: int, color_type: int, rows: bytes | None = None) -> bytes:
    """A PNG written chunk by chunk (Pillow cannot write 16-bit RGB or lie about sizes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    idat = zlib.compress(rows if rows is not None else b"")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def png_16bit_rgb(height: int = 12, width: int = 16) -> tuple[bytes, np.ndarray]:
    """A 48-bit RGB PNG and the 8-bit RGB it should decode to (the high bytes)."""
    wide = pixels(height, width).astype(np.uint16) * 257 + 100
    rows = b"".join(b"\x00" + wide[y].astype(">u2").tobytes() for y in range(height))
    return raw_png(width, height, 16, 2, rows), (wide >> 8).astype(np.uint8)


def png_16bit_grey(height: int = 12, width: int = 16) -> tuple[bytes, np.ndarray]:
    """A 16-bit greyscale PNG and the 8-bit RGB it should decode to."""
    wide = pixels(height, width)[:, :, 0].astype(np.uint16) * 257 + 100
    rows = b"".join(b"\x00" + wide[y].astype(">u2").tobytes() for y in range(height))
    return raw_png(width, height, 16, 0, rows), np.repeat((wide >> 8).astype(np.uint8)[:, :, None], 3, axis=2)


def variants() -> dict[str, bytes]:
    """Every colour mode and format that must come out as the same kind of RGB tensor."""
    image = rgb_image()
    palette = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    transparent_palette = palette.copy()
    transparent_palette.info["transparency"] = 0
    return {
        "jpeg": jpeg(),
        "jpeg-grey": encode(image.convert("L"), "JPEG"),
        "jpeg-cmyk": encode(image.convert("CMYK"), "JPEG"),
        "jpeg-exif-rotated": with_orientation("JPEG"),
        "png": png(),
        "png-grey": encode(image.convert("L"), "PNG"),
        "png-grey-alpha": encode(image.convert("LA"), "PNG"),
        "png-rgba": encode(image.convert("RGBA"), "PNG"),
        "png-palette": encode(palette, "PNG"),
        "png-palette-transparent": encode(transparent_palette, "PNG", transparency=0),
        "png-16bit-grey": png_16bit_grey()[0],
        "png-16bit-rgb": png_16bit_rgb()[0],
        "png-exif-rotated": with_orientation("PNG"),
        "webp": webp(),
        "webp-rgba": encode(image.convert("RGBA"), "WEBP", lossless=True),
    }


def expected_rgb(data: bytes) -> np.ndarray:
    """Pillow's reading of the same bytes: EXIF applied, alpha dropped, 16-bit to high byte."""
    from PIL import ImageOps

    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    if image.mode in ("I", "I;16"):
        grey = (np.asarray(image).astype(np.int64) >> 8).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    return np.asarray(image.convert("RGB"))


def corrupt_png_idat() -> bytes:
    """A PNG whose pixel data is damaged (a bad IDAT checksum)."""
    data = bytearray(png(96, 128))
    start = data.index(b"IDAT") + 4
    data[start + 100:start + 160] = bytes(60)
    return bytes(data)


def png_bomb(side: int = 100_000) -> bytes:
    """A few hundred bytes claiming side x side pixels (with one real row's worth of data)."""
    return raw_png(side, side, 8, 2, b"\x00" * 64)


def gif_bomb(side: int = 60_000) -> bytes:
    """A small GIF whose logical screen claims side x side pixels (at most 65535 a side)."""
    data = bytearray(gif(16, 16))
    data[6:10] = struct.pack("<HH", side, side)
    return bytes(data)


def bmp_bomb(side: int = 20_000) -> bytes:
    """A small BMP whose header claims side x side pixels (Pillow refuses over 2**31 outright)."""
    data = bytearray(bmp(16, 16))
    data[18:26] = struct.pack("<ii", side, side)
    return bytes(data)


def jpeg_bomb(side: int = 60_000) -> bytes:
    """A JPEG whose frame header claims side x side pixels; its scan data is garbage."""
    data = bytearray(jpeg(16, 16))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", side, side)
    return bytes(data)
