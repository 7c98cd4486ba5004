"""Decoding user images into the RGB squares every stage expects, with a reason for each failure.

Handles what real folders contain: CMYK JPEGs, greyscale, palette and alpha PNGs (composited on
white, the usual viewer convention), and files that are empty, truncated or not images at all.
Each failure raises `BadImage` whose `reason` is one of `BAD_IMAGE_REASONS`, so callers can count
skips by reason instead of crashing.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

BAD_IMAGE_REASONS = ("missing file", "empty file", "not an image", "truncated image")


class BadImage(ValueError):
    def __init__(self, reason: str, path: str, detail: str = ""):
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))
        self.reason = reason
        self.path = path


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB view of any PIL mode; transparency is composited on white."""
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA") or (image.mode == "RGB" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def centre_crop_resize(image: Image.Image, size: int) -> np.ndarray:
    """Largest centred square, resized to size x size (bicubic; box-filtered when shrinking a lot)."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    if side > 2 * size:
        square = square.reduce(side // (2 * size))
    return np.asarray(square.resize((size, size), Image.Resampling.BICUBIC), np.uint8)


def decode(data: bytes, path: str, size: int) -> np.ndarray:
    """uint8 [size, size, 3] from encoded image bytes, or BadImage with the reason."""
    if not data:
        raise BadImage("empty file", path)
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return centre_crop_resize(to_rgb(image), size)
    except UnidentifiedImageError as error:
        raise BadImage("not an image", path, str(error)) from None
    except (OSError, SyntaxError, ValueError) as error:
        # PIL reports cut-off files as OSError ("image file is truncated", "broken data stream").
        raise BadImage("truncated image", path, str(error)) from None


def read(path: str, size: int) -> np.ndarray:
    from etils import epath

    file = epath.Path(path)
    if not file.exists():
        raise BadImage("missing file", path)
    return decode(file.read_bytes(), path, size)
