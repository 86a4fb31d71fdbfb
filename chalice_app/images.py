"""Is this object an image the endpoint can read? Decided from its first bytes, not its name."""

from __future__ import annotations

_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
)


def image_format(head: bytes) -> str | None:
    """The format named by the file's magic bytes, or None when it is not a supported image."""
    for signature, name in _SIGNATURES:
        if head.startswith(signature):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


def check_image(data: bytes, max_bytes: int) -> str | None:
    """The reason this payload cannot be classified, or None when it can."""
    if not data:
        return "the object is empty"
    if len(data) > max_bytes:
        return f"the object is {len(data)} bytes, over the {max_bytes}-byte limit"
    if image_format(data[:16]) is None:
        return "the object is not a JPEG, PNG, GIF, BMP or WebP image"
    return None
