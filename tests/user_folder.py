"""A user folder of photo-like pictures made on the spot: what a user's own data looks like to the
chain (JPEG and PNG files of odd sizes, natural-image statistics, free-form captions that many
images share, a few broken files and lines), and nothing the `shapes` verifier could read.

    python tests/user_folder.py OUT_DIR [COUNT]     # writes OUT_DIR/captions.jsonl + images

Each picture is a landscape: a sky gradient (day, dusk, night or overcast), a ground band (grass,
sand, snow or water) with a horizon that wobbles, an optional sun or moon, optional trees, all
under sensor noise and saved as JPEG (lossy) or PNG. The caption names what is there in words
("a dusk sky over sand with a sun and two trees"), so captions carry the picture's content but
repeat across pictures.
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
from PIL import Image

SKIES = {"blue": ((70, 130, 220), (170, 210, 250)), "dusk": ((60, 40, 110), (250, 150, 80)),
         "night": ((5, 5, 30), (30, 30, 80)), "grey": ((120, 120, 130), (200, 200, 205))}
GROUNDS = {"grass": (50, 140, 50), "sand": (220, 190, 120), "snow": (240, 240, 245),
           "water": (30, 80, 160)}
COUNT_WORDS = {1: "a tree", 2: "two trees", 3: "three trees"}


def picture(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, str]:
    """uint8 [h, w, 3] landscape and its caption."""
    height, width = size
    sky, ground = rng.choice(list(SKIES)), rng.choice(list(GROUNDS))
    top, bottom = (np.asarray(c, np.float32) for c in SKIES[sky])
    y = np.linspace(0, 1, height)[:, None, None]
    image = np.broadcast_to(top + (bottom - top) * y, (height, width, 3)).copy()
    xs = np.arange(width)
    horizon = (height * rng.uniform(0.5, 0.7)
               + height * 0.04 * np.sin(xs / width * rng.uniform(2, 8) + rng.uniform(0, 6)))
    below = np.arange(height)[:, None] > horizon[None, :]
    shade = 1.0 - 0.3 * (np.arange(height)[:, None] / height)
    image[below] = (np.asarray(GROUNDS[ground], np.float32) * shade[..., None]
                    * np.ones((1, width, 1)))[below]
    things = []
    yy, xx = np.mgrid[:height, :width]
    if rng.random() < 0.6:
        body = "moon" if sky == "night" else "sun"
        cx, cy, r = rng.uniform(0.15, 0.85) * width, rng.uniform(0.1, 0.35) * height, \
            rng.uniform(0.06, 0.12) * width
        colour = (235, 235, 210) if body == "moon" else (255, 220, 90)
        image[(xx - cx) ** 2 + (yy - cy) ** 2 < r ** 2] = colour
        things.append(f"a {body}")
    trees = int(rng.integers(0, 4)) if ground != "water" else 0
    for _ in range(trees):
        cx = rng.uniform(0.1, 0.9) * width
        base = horizon[int(min(width - 1, cx))] + 2
        tall, half = rng.uniform(0.2, 0.35) * height, rng.uniform(0.05, 0.09) * width
        inside = (yy < base) & (yy > base - tall) & \
            (np.abs(xx - cx) < half * (yy - (base - tall)) / tall)
        image[inside] = (20, 90 + int(rng.integers(0, 40)), 30)
    if trees:
        things.append(COUNT_WORDS[trees])
    image += rng.normal(0, 4, image.shape)
    caption = f"a {sky} sky over {'the ' if ground == 'water' else ''}{ground}"
    if things:
        caption += " with " + " and ".join(things)
    return np.clip(image, 0, 255).astype(np.uint8), caption


def write_folder(root: pathlib.Path, count: int, seed: int = 0, broken: bool = True) -> list[str]:
    """Writes `count` pictures and captions.jsonl under `root` (plus, with `broken`, a file that is
    not an image, a missing file and a malformed line); returns the captions written."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "pictures").mkdir(exist_ok=True)
    lines, captions = [], []
    for index in range(count):
        size = (int(rng.integers(56, 96)), int(rng.integers(56, 120)))
        image, caption = picture(rng, size)
        name = f"pictures/{index:05d}." + ("jpg" if index % 3 else "png")
        Image.fromarray(image).save(root / name, quality=85) if name.endswith("jpg") else \
            Image.fromarray(image).save(root / name)
        lines.append(json.dumps({"image": name, "caption": caption, "license": "CC0-1.0",
                                 "source": "tests/user_folder.py"}))
        captions.append(caption)
    if broken:
        (root / "pictures" / "notes.jpg").write_text("not a picture")
        lines += [json.dumps({"image": "pictures/notes.jpg", "caption": "broken"}),
                  json.dumps({"image": "pictures/gone.png", "caption": "missing"}),
                  '{"image": "pictures/00000.png", "caption": ']
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return captions


if __name__ == "__main__":
    out = pathlib.Path(sys.argv[1])
    written = write_folder(out, int(sys.argv[2]) if len(sys.argv) > 2 else 2000)
    print(f"{len(written)} pictures, {len(set(written))} distinct captions -> {out}")
