"""Difficulty levels of `shapes`: named settings of `data.max_objects` and `data.textured_fraction`.

    level 1  one object on a plain background                     432 object layouts
    level 2  one or two objects, a quarter of backgrounds textured   83,376 object layouts
    level 3  one to three objects, half of backgrounds textured      9,373,104 object layouts

An object layout is what the verifier reads back (shape, colour, size and grid cell of every
object); backgrounds (a grey level with a tint, and for textured ones the texture, period and
orientation) and the small objects' jitter vary on top of it. Level 3 is the `DataConfig`
default; configs take a level as their argument (`experiments/demo.py:level1`) and `apply` sets
the two fields. How well the project's tokenizers reproduce each level (the verifier's ceiling
on VQ-GAN reconstructions) is in docs/RESULTS.md, "Levels of shapes".
"""

from __future__ import annotations

import dataclasses
import math
from typing import Union

import ml_collections

from cm3leon_jax.data.sources.shapes.scenes import COLOURS, POSITIONS, SHAPES, SIZES


@dataclasses.dataclass(frozen=True)
class Level:
    max_objects: int
    textured_fraction: float
    description: str

    @property
    def object_layouts(self) -> int:
        """Distinct object lists (each object on its own cell of the 3x3 grid)."""
        kinds = len(SHAPES) * len(COLOURS) * len(SIZES)
        return sum(math.comb(len(POSITIONS), count) * kinds ** count
                   for count in range(1, self.max_objects + 1))


LEVELS = {
    1: Level(1, 0.0, "one object on a plain background"),
    2: Level(2, 0.25, "one or two objects, a quarter of the backgrounds textured"),
    3: Level(3, 0.5, "one to three objects, half of the backgrounds textured (the default)"),
}


def parse(level: Union[int, str, None], default: int = 3) -> int:
    """1, 2 or 3 from an int or a config argument such as `level1` / `1` (None: `default`)."""
    if level is None or level == "":
        return default
    text = str(level).strip().lower()
    number = text[len("level"):] if text.startswith("level") else text
    if not number.isdigit() or int(number) not in LEVELS:
        raise ValueError(f"unknown shapes level {level!r}: use one of "
                         f"{', '.join(f'level{n}' for n in LEVELS)}")
    return int(number)


def apply(data: ml_collections.ConfigDict, level: Union[int, str, None],
          default: int = 3) -> ml_collections.ConfigDict:
    """Sets `data.max_objects` and `data.textured_fraction` for `level`; returns `data`."""
    chosen = LEVELS[parse(level, default)]
    data.max_objects = chosen.max_objects
    data.textured_fraction = chosen.textured_fraction
    return data
