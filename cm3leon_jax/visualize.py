"""PNG grids of images with their text: what a person looks at after each stage."""

from __future__ import annotations

import textwrap
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def image_grid(images: Sequence[np.ndarray], texts: Sequence[str] = (), columns: int = 4,
               cell: int = 128, text_lines: int = 5) -> Image.Image:
    """Images (uint8 [H, W, 3], any size; upscaled without smoothing) in a grid, text under each."""
    if not len(images):
        raise ValueError("image_grid needs at least one image")
    font = ImageFont.load_default()
    line_height = 12
    label = line_height * text_lines if texts else 0
    rows = -(-len(images) // columns)
    canvas = Image.new("RGB", (columns * (cell + 4), rows * (cell + label + 4)), "white")
    draw = ImageDraw.Draw(canvas)
    chars_per_line = max(8, cell // 6)
    for index, image in enumerate(images):
        x, y = (index % columns) * (cell + 4) + 2, (index // columns) * (cell + label + 4) + 2
        tile = Image.fromarray(np.asarray(image, np.uint8)).resize((cell, cell),
                                                                    Image.Resampling.NEAREST)
        canvas.paste(tile, (x, y))
        if texts:
            lines = textwrap.wrap(texts[index], chars_per_line)[:text_lines]
            for number, line in enumerate(lines):
                draw.text((x, y + cell + number * line_height), line, fill="black", font=font)
    return canvas


def save_grid(path, images: Sequence[np.ndarray], texts: Sequence[str] = (), **kwargs) -> None:
    from etils import epath

    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as file:
        image_grid(images, texts, **kwargs).save(file, format="PNG")
