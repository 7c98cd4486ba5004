"""Original-vs-reconstruction image grids, for TensorBoard and for PNG files people look at."""

from __future__ import annotations

import numpy as np
from etils import epath
from PIL import Image


def comparison_grid(originals: np.ndarray, reconstructions: np.ndarray, columns: int = 8,
                    scale: int = 1, gap: int = 2) -> np.ndarray:
    """uint8 [H', W', 3]: rows alternate originals and their reconstructions, `columns` per row.

    `scale` enlarges every pixel (nearest neighbour) so 32x32 images are visible; `gap` white
    pixels separate the cells.
    """
    originals, reconstructions = np.asarray(originals), np.asarray(reconstructions)
    if originals.shape != reconstructions.shape or originals.ndim != 4:
        raise ValueError(f"need two image batches [B, H, W, 3] of the same shape, got "
                         f"{originals.shape} and {reconstructions.shape}")
    count, height, width, channels = originals.shape
    columns = max(1, min(columns, count))
    pair_rows = -(-count // columns)
    cell_h, cell_w = height * scale + gap, width * scale + gap
    grid = np.full((2 * pair_rows * cell_h + gap, columns * cell_w + gap, channels), 255, np.uint8)
    for index in range(count):
        pair_row, column = divmod(index, columns)
        for offset, image in enumerate((originals[index], reconstructions[index])):
            top = (2 * pair_row + offset) * cell_h + gap
            left = column * cell_w + gap
            big = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)
            grid[top:top + height * scale, left:left + width * scale] = big
    return grid


def save_png(path: str | epath.Path, image: np.ndarray) -> epath.Path:
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as file:
        Image.fromarray(np.asarray(image, np.uint8)).save(file, format="PNG")
    return path
