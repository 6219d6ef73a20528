"""Reading one image's pixels as floats in 0..1, whatever its mode (8-bit, 16-bit, float,
palette with transparency), for training data (``kdistill.data.images``) and for ``kdistill
predict`` alike: without PyTorch, which predict does not import."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from kdistill.errors import DataError


def read_image(file: Path, mode: str, size: tuple[int, int] | None) -> np.ndarray:
    """One image as floats in 0..1, (H, W) or (H, W, 3), resized to ``size`` (W, H) when given.
    Anything a decoder raises on a user's file, including PIL's refusal of images over its pixel
    limit (a decompression bomb), becomes one line naming the file."""
    from PIL import Image

    with DecodingErrors(file):
        with Image.open(file) as image:
            if image.mode in WIDE_MODES:
                return _wide_pixels(image, file, mode, size)
            if image.mode in ("P", "PA") and "transparency" in image.info:
                image = image.convert("RGBA")  # PIL's advice: its transparency survives only so
            if image.mode not in CONVERTIBLE_MODES:
                raise DataError(
                    f"{file}: {image.mode} pixels cannot be read; save it as grey or RGB "
                    "(8 or 16 bits)"
                )
            image = image.convert(mode)  # alpha is dropped: the colour under it is kept
            if size is not None and image.size != size:
                image = image.resize(size)
            return np.asarray(image, dtype=np.float32) / 255.0


# One channel of more than 8 bits, and the value of white in each: convert("L") would clip
# every 16-bit value above 255 to white. 32-bit integers are read as 16-bit (what PNG and most
# TIFFs hold); floats as they are, and either is refused outside 0..white.
WIDE_MODES = {
    "I;16": 65535.0,
    "I;16B": 65535.0,
    "I;16L": 65535.0,
    "I;16N": 65535.0,
    "I": 65535.0,
    "F": 1.0,
}
CONVERTIBLE_MODES = {
    "1",
    "L",
    "LA",
    "La",
    "P",
    "PA",
    "RGB",
    "RGBA",
    "RGBX",
    "RGBa",
    "CMYK",
    "YCbCr",
}


def _wide_pixels(image, file: Path, mode: str, size: tuple[int, int] | None) -> np.ndarray:
    depth, white = image.mode, WIDE_MODES[image.mode]
    image = image.convert("I").convert("F") if depth.startswith("I;16") else image.convert("F")
    pixels = np.asarray(image, dtype=np.float32) / white
    low, high = float(pixels.min()), float(pixels.max())
    if not (0.0 <= low and high <= 1.0):
        raise DataError(
            f"{file}: {depth} pixels from {low * white:g} to {high * white:g}, "
            f"outside 0..{white:g}; save it as 8- or 16-bit grey"
        )
    if size is not None and image.size != size:
        # Bicubic resampling overshoots at edges; 8-bit images are clipped by PIL, floats here.
        pixels = np.clip(np.asarray(image.resize(size), dtype=np.float32) / white, 0.0, 1.0)
    return pixels if mode == "L" else np.repeat(pixels[..., None], 3, axis=-1)


class DecodingErrors:
    """PIL's errors on a damaged or oversized file, as one ``DataError`` naming it."""

    def __init__(self, file: Path):
        self.file = file

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        from PIL import Image

        if kind is None:
            return False
        if issubclass(kind, Image.DecompressionBombError):
            raise DataError(
                f"{self.file}: more pixels than PIL's limit of "
                f"{Image.MAX_IMAGE_PIXELS:,} (a decompression "
                "bomb, or a huge image); shrink or remove it"
            ) from None
        # PIL's decoders raise all of these on damaged files (SyntaxError from some header parsers).
        if issubclass(
            kind, (OSError, ValueError, SyntaxError, EOFError, struct.error, MemoryError)
        ):
            raise DataError(
                f"{self.file}: not a readable image ({kind.__name__}); remove or replace it"
            ) from None
        return False
