"""Decoding image files for the core's datasets, with Pillow as an optional dependency.

The core does not depend on torchvision; Pillow is imported only when a dataset actually decodes or writes
image files, and its absence is a one-line error naming the package to install.
"""

from __future__ import annotations

import os
from typing import Any, BinaryIO

from transmodal.errors import ConfigError


def pillow() -> Any:
    """The ``PIL.Image`` module, or a clear error when Pillow is not installed."""
    try:
        from PIL import Image
    except ImportError:
        raise ConfigError("reading or writing image files needs Pillow: pip install pillow") from None
    return Image


# The files read as images: by predict, and by the datasets that list image folders.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"})


def undecodable() -> tuple[type[Exception], ...]:
    """What Pillow raises for a file it cannot decode: damaged, of an unknown format, or over its pixel limit (a
    decompression bomb, which ``Image.MAX_IMAGE_PIXELS`` sets)."""
    return OSError, ValueError, SyntaxError, pillow().DecompressionBombError


def decode_rgb(path: str | os.PathLike[str] | BinaryIO, size: int) -> bytes:
    """One image (a file, or a binary stream such as an image a Hugging Face dataset holds) as RGB uint8 bytes
    in (3, size, size) order: shorter side resized to ``size`` (antialiased), then centre-cropped, as
    ``image-folder`` does. Channel-major bytes without numpy or torch, so that decoding worker processes never
    touch torch (whose thread pool does not survive a fork)."""
    image_module = pillow()
    with image_module.open(path) as opened:
        image = _as_8_bit(opened).convert("RGB")
    width, height = image.size
    scale = size / min(width, height)
    resized = (max(size, round(width * scale)), max(size, round(height * scale)))
    image = image.resize(resized, image_module.Resampling.BILINEAR, reducing_gap=None)
    left, top = (resized[0] - size) // 2, (resized[1] - size) // 2
    image = image.crop((left, top, left + size, top + size))
    return b"".join(channel.tobytes() for channel in image.split())


def _as_8_bit(image: Any) -> Any:
    """16-bit greyscale (PNG, TIFF: Pillow's modes I;16* and I) scaled to 8 bits; Pillow's own conversion clips at
    255, which turns every image brighter than 255 of 65535 into pure white."""
    if image.mode.startswith("I;16") or image.mode == "I":
        return image.point(lambda value: value / 257).convert("L")
    return image

