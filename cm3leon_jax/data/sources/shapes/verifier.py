"""Reads objects (shape, colour, size, grid position) back out of any image, deterministically.

This is the judge of every later quality figure (VQ-GAN reconstructions, text-to-image, editing), so
it explains each saturated blob or refuses the image:

1. every pixel gets its nearest palette colour; a pixel is an object pixel when it is saturated and
   close enough to that colour (backgrounds are low-saturation greys by construction);
2. object pixels of one colour form connected components (8-connectivity);
3. each component is fitted with every (shape, size) template of `render.py`, aligned on the
   component's bounding box with sub-pixel offsets; the best intersection-over-union must reach
   `min_iou`, otherwise the blob is *unexplained*;
4. an image with unexplained blobs, or with many saturated pixels that belong to no object, is not a
   match for anything. Noise images therefore never pass (tested).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
from scipy import ndimage

from cm3leon_jax.data.sources.shapes import render
from cm3leon_jax.data.sources.shapes.scenes import COLOURS, SHAPES, SIZES

ObjectKey = tuple[str, str, str, int]  # (shape, colour, size, position)

_PALETTE = np.array(list(COLOURS.values()), np.float32)
_NAMES = tuple(COLOURS)
_EIGHT_CONNECTED = np.ones((3, 3), bool)


@dataclasses.dataclass(frozen=True)
class Detection:
    objects: tuple[ObjectKey, ...]  # sorted
    unexplained_blobs: int  # saturated components no template fits
    stray_fraction: float  # share of the image's pixels that are saturated but belong to no object

    @property
    def valid(self) -> bool:
        return self.unexplained_blobs == 0 and self.stray_fraction <= 0.02


@functools.lru_cache(maxsize=None)
def _extent(shape: str) -> tuple[float, float, float, float]:
    """(x_min, x_max, y_min, y_max) of a shape in units of its radius."""
    if shape == "circle":
        return (-1.0, 1.0, -1.0, 1.0)
    polygon = render.POLYGONS[shape]
    return (*map(float, (polygon[:, 0].min(), polygon[:, 0].max())),
            *map(float, (polygon[:, 1].min(), polygon[:, 1].max())))


def _fit(component: np.ndarray, window: tuple[slice, slice], size: int
         ) -> tuple[float, str, str, float, float]:
    """Best (iou, shape, size_name, centre_x, centre_y) for one component's mask (cropped to window)."""
    rows, cols = np.nonzero(component)
    coords = render.pixel_centres(size)
    ys, xs = coords[window[0]], coords[window[1]]
    box_x = (cols.min() + cols.max() + 1) / 2 / size + xs[0] - 0.5 / size
    box_y = (rows.min() + rows.max() + 1) / 2 / size + ys[0] - 0.5 / size
    area = component.sum()
    best = (0.0, "", "", 0.0, 0.0)
    half_pixel = 0.5 / size
    for shape in SHAPES:
        x0, x1, y0, y1 = _extent(shape)
        for size_name in SIZES:
            radius = render.RADIUS[size_name]
            for dx in (-half_pixel, 0.0, half_pixel):
                for dy in (-half_pixel, 0.0, half_pixel):
                    cx = box_x - (x0 + x1) / 2 * radius + dx
                    cy = box_y - (y0 + y1) / 2 * radius + dy
                    template = render.shape_mask(shape, cx, cy, radius, xs, ys)
                    inter = np.logical_and(template, component).sum()
                    iou = inter / (area + template.sum() - inter)
                    if iou > best[0]:
                        best = (float(iou), shape, size_name, cx, cy)
    return best


def detect(image: np.ndarray, min_iou: float = 0.6) -> Detection:
    """Objects in an RGB uint8 image [S, S, 3] (any S >= 16)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] != image.shape[1]:
        raise ValueError(f"verifier needs a square RGB image [S, S, 3], got shape {image.shape}")
    size = image.shape[0]
    pixels = image.astype(np.float32)
    distance = np.linalg.norm(pixels[:, :, None, :] - _PALETTE[None, None], axis=-1)
    nearest = distance.argmin(-1)
    saturation = pixels.max(-1) - pixels.min(-1)
    saturated = saturation >= 60
    object_pixels = saturated & (distance.min(-1) <= 100)
    # Smallest legitimate object: a small triangle, about 1.66 r^2 pixels; blobs under a third of
    # that are speckle (counted as stray, not as objects).
    min_area = max(3, int(0.55 * (render.RADIUS["small"] * size) ** 2))
    margin = int(np.ceil(0.2 * size / 3))
    objects, unexplained, explained_pixels = [], 0, 0
    for colour_index, colour in enumerate(_NAMES):
        labels, count = ndimage.label(object_pixels & (nearest == colour_index), _EIGHT_CONNECTED)
        for index, box in enumerate(ndimage.find_objects(labels), start=1):
            component = labels[box] == index
            if component.sum() < min_area:
                continue
            window = tuple(slice(max(0, s.start - margin), min(size, s.stop + margin)) for s in box)
            crop = labels[window] == index
            iou, shape, size_name, cx, cy = _fit(crop, window, size)
            if iou < min_iou:
                unexplained += 1
                continue
            explained_pixels += int(component.sum())
            row = min(2, max(0, int(cy * 3)))
            col = min(2, max(0, int(cx * 3)))
            objects.append((shape, colour, size_name, 3 * row + col))
    stray = (int(saturated.sum()) - explained_pixels) / size**2
    return Detection(tuple(sorted(objects)), unexplained, max(0.0, stray))


def matches(image: np.ndarray, expected: list[ObjectKey] | tuple[ObjectKey, ...]) -> bool:
    """True when the image shows exactly the expected objects and nothing unexplained."""
    detection = detect(image)
    return detection.valid and detection.objects == tuple(sorted(map(tuple, expected)))
