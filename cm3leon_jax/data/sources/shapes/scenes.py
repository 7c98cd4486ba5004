"""Scenes of the embedded `shapes` data set: sampling, captions, questions, edits.

A scene is pure data (background + up to three objects, each on its own cell of a 3x3 grid);
`render.py` turns it into pixels at any resolution and `verifier.py` reads pixels back into objects.
Every random choice comes from a numpy Generator seeded by the caller, so the same seed gives the
same scenes, captions and bytes on any machine.

Captions are written from several templates and parsed back by `parse_caption` (the judge of
text-to-image prompts and the caption/object-list consistency test).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import Optional, Sequence

import numpy as np

SHAPES = ("circle", "square", "triangle", "cross")
# Saturated colours far apart in RGB, so the verifier separates them even after VQ-GAN blurring.
COLOURS = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (235, 215, 40),
    "green": (40, 175, 60),
    "blue": (40, 80, 225),
    "purple": (150, 55, 205),
}
COLOUR_NAMES = tuple(COLOURS)
SIZES = ("small", "large")
# Row-major 3x3 grid; index = 3 * row + column.
POSITIONS = ("top left", "top", "top right", "left", "centre", "right",
             "bottom left", "bottom", "bottom right")
POSITION_PHRASES = ("at the top left", "at the top", "at the top right", "on the left",
                    "in the centre", "on the right", "at the bottom left", "at the bottom",
                    "at the bottom right")
BACKGROUNDS = ("plain", "stripes", "checker", "noise")
NUMBER_WORDS = ("zero", "one", "two", "three")
DIRECTIONS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}


@dataclasses.dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str
    position: int  # grid cell, 0..8
    jitter: tuple[float, float] = (0.0, 0.0)  # centre offset in cell units (row, col)

    @property
    def key(self) -> tuple[str, str, str, int]:
        """What the verifier can read back (jitter is rendering detail)."""
        return (self.shape, self.colour, self.size, self.position)

    def phrase(self) -> str:
        article = "an" if self.size[0] in "aeiou" else "a"
        return f"{article} {self.size} {self.colour} {self.shape} {POSITION_PHRASES[self.position]}"


@dataclasses.dataclass(frozen=True)
class Background:
    kind: str  # one of BACKGROUNDS
    base: tuple[int, int, int]  # low-saturation grey-ish colour
    alt: tuple[int, int, int]  # second colour of the texture (== base for plain)
    period: float = 0.25  # texture period as a fraction of the image side
    orientation: int = 0  # stripes: 0 horizontal, 1 vertical, 2 diagonal
    noise_seed: int = 0


@dataclasses.dataclass(frozen=True)
class Scene:
    background: Background
    objects: tuple[Obj, ...]

    def key(self) -> str:
        """Canonical text of everything that determines the pixels (used for split assignment)."""
        return repr(self)

    def with_objects(self, objects: Sequence[Obj]) -> "Scene":
        return Scene(self.background, tuple(objects))


# --------------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------------

def _grey(rng: np.random.Generator, low: int, high: int) -> tuple[int, int, int]:
    level = int(rng.integers(low, high))
    tint = rng.integers(-8, 9, size=3)
    return tuple(int(np.clip(level + t, 0, 255)) for t in tint)


def sample_background(rng: np.random.Generator, textured_fraction: float) -> Background:
    dark = bool(rng.integers(2))
    base = _grey(rng, 25, 75) if dark else _grey(rng, 165, 215)
    if rng.random() >= textured_fraction:
        return Background("plain", base, base)
    kind = BACKGROUNDS[1 + int(rng.integers(3))]
    shift = int(rng.integers(22, 40)) * (1 if dark else -1)
    alt = tuple(int(np.clip(c + shift, 0, 255)) for c in base)
    return Background(kind, base, alt, period=float(rng.choice([1 / 4, 1 / 6, 1 / 8])),
                      orientation=int(rng.integers(3)), noise_seed=int(rng.integers(2**31)))


def sample_objects(rng: np.random.Generator, max_objects: int) -> tuple[Obj, ...]:
    count = int(rng.integers(1, max_objects + 1))
    cells = rng.choice(9, size=count, replace=False)
    objects = []
    for cell in cells:
        size = SIZES[int(rng.integers(2))]
        # Small objects wander inside their cell; large ones stay centred so neighbours never touch.
        jitter = tuple(float(round(j, 2)) for j in rng.uniform(-0.08, 0.08, 2)) if size == "small" \
            else (0.0, 0.0)
        objects.append(Obj(SHAPES[int(rng.integers(len(SHAPES)))],
                           COLOUR_NAMES[int(rng.integers(len(COLOURS)))], size, int(cell), jitter))
    return tuple(objects)


def sample_scene(rng: np.random.Generator, max_objects: int = 3,
                 textured_fraction: float = 0.5) -> Scene:
    return Scene(sample_background(rng, textured_fraction), sample_objects(rng, max_objects))


def split_bucket(scene: Scene) -> float:
    """A number in [0, 1) from the scene's content: splits are ranges of it, hence disjoint."""
    digest = hashlib.sha256(scene.key().encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64


# --------------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------------

CAPTION_TEMPLATES = (
    "{objects}",
    "there is {objects}",
    "an image with {objects}",
    "a picture of {objects}",
)


def join_phrases(phrases: Sequence[str]) -> str:
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def caption(scene: Scene, template: int = 0) -> str:
    return CAPTION_TEMPLATES[template].format(
        objects=join_phrases([o.phrase() for o in scene.objects]))


_OBJECT_RE = re.compile(
    r"an? (?P<size>{sizes}) (?P<colour>{colours}) (?P<shape>{shapes}) (?P<position>{positions})"
    .format(sizes="|".join(SIZES), colours="|".join(COLOURS), shapes="|".join(SHAPES),
            positions="|".join(sorted(POSITION_PHRASES, key=len, reverse=True))))


def parse_caption(text: str) -> Optional[list[tuple[str, str, str, int]]]:
    """Object keys named by a caption written by any template; None if it is not such a caption."""
    text = text.strip().lower().rstrip(".")
    for template in sorted(CAPTION_TEMPLATES, key=len, reverse=True):
        prefix = template.replace("{objects}", "")
        if text.startswith(prefix):
            text = text[len(prefix):]
            break
    parts = re.split(r", | and ", text)
    keys = []
    for part in parts:
        match = _OBJECT_RE.fullmatch(part.strip())
        if not match:
            return None
        keys.append((match["shape"], match["colour"], match["size"],
                     POSITION_PHRASES.index(match["position"])))
    return keys


# --------------------------------------------------------------------------------------------------
# Questions and answers
# --------------------------------------------------------------------------------------------------

def _name(obj: Obj, objects: Sequence[Obj], asking: str = "") -> str:
    """The shortest unambiguous noun phrase for `obj` among `objects` that does not use the attribute
    being asked about (`asking` in "colour" / "position"), so no question gives its answer away."""
    if sum(o.shape == obj.shape for o in objects) == 1:
        return f"the {obj.shape}"
    if asking != "colour" and \
            sum((o.shape, o.colour) == (obj.shape, obj.colour) for o in objects) == 1:
        return f"the {obj.colour} {obj.shape}"
    if asking != "position":
        return f"the {obj.shape} {POSITION_PHRASES[obj.position]}"
    if sum((o.shape, o.size) == (obj.shape, obj.size) for o in objects) == 1:
        return f"the {obj.size} {obj.shape}"
    return f"the {obj.size} {obj.colour} {obj.shape}"


def questions(scene: Scene, rng: np.random.Generator) -> list[tuple[str, str]]:
    """Colour, shape, count and position questions whose answers the scene fixes uniquely."""
    objs = scene.objects
    qa = [("how many objects are there?", NUMBER_WORDS[len(objs)])]
    for obj in objs:
        qa.append((f"what colour is {_name(obj, objs, 'colour')}?", obj.colour))
        where = _name(obj, objs, "position")
        if sum(_name(o, objs, "position") == where for o in objs) == 1:
            qa.append((f"where is {where}?", POSITIONS[obj.position]))
        if sum(o.colour == obj.colour for o in objs) == 1:
            qa.append((f"what shape is the {obj.colour} object?", obj.shape))
    shape, colour = SHAPES[int(rng.integers(len(SHAPES)))], COLOUR_NAMES[int(rng.integers(6))]
    present = any((o.shape, o.colour) == (shape, colour) for o in objs)
    qa.append((f"is there a {colour} {shape}?", "yes" if present else "no"))
    return qa


# --------------------------------------------------------------------------------------------------
# Edits
# --------------------------------------------------------------------------------------------------

EDIT_KINDS = ("recolour", "move", "remove", "resize")


def _move_target(obj: Obj, direction: str, occupied: set[int]) -> Optional[int]:
    row, col = divmod(obj.position, 3)
    dr, dc = DIRECTIONS[direction]
    row, col = row + dr, col + dc
    if not (0 <= row < 3 and 0 <= col < 3) or 3 * row + col in occupied:
        return None
    return 3 * row + col


def sample_edit(scene: Scene, rng: np.random.Generator) -> tuple[str, Scene]:
    """An instruction and the scene it asks for; every instruction changes exactly one object."""
    objs = list(scene.objects)
    index = int(rng.integers(len(objs)))
    obj = objs[index]
    name = _name(obj, objs)
    kinds = [k for k in EDIT_KINDS if k != "remove" or len(objs) > 1]
    occupied = {o.position for o in objs}
    moves = [d for d in DIRECTIONS if _move_target(obj, d, occupied) is not None]
    if not moves:
        kinds.remove("move")
    kind = kinds[int(rng.integers(len(kinds)))]
    if kind == "recolour":
        colour = [c for c in COLOUR_NAMES if c != obj.colour][int(rng.integers(len(COLOURS) - 1))]
        objs[index] = dataclasses.replace(obj, colour=colour)
        return f"make {name} {colour}", scene.with_objects(objs)
    if kind == "move":
        direction = moves[int(rng.integers(len(moves)))]
        target = _move_target(obj, direction, occupied)
        objs[index] = dataclasses.replace(obj, position=target)
        word = {"up": "up", "down": "down", "left": "to the left", "right": "to the right"}
        return f"move {name} {word[direction]}", scene.with_objects(objs)
    if kind == "remove":
        del objs[index]
        return f"remove {name}", scene.with_objects(objs)
    size = "small" if obj.size == "large" else "large"
    objs[index] = dataclasses.replace(obj, size=size, jitter=(0.0, 0.0))
    return f"make {name} {'smaller' if size == 'small' else 'larger'}", scene.with_objects(objs)
