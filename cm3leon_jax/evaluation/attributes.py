"""Judging outputs against the ground-truth scene the `shapes` builder stores with each example.

Objects are keys (shape, colour, size, position) as `data/sources/shapes/verifier.py` reads them
back from pixels and `data/sources/shapes/builder.decode_objects` from an example's `objects` feature.

Images (text-to-image, editing): `object_scores` pairs the verifier's detected objects with the
expected ones one-to-one, choosing the pairing that agrees on the most attributes (brute force:
scenes hold at most three objects). Reported per image:
  * `exact`: the verifier's `matches` (exactly the expected objects, nothing unexplained);
  * `attributes`: agreeing attributes over 4 x max(#expected, #detected): a missing object costs
    its four attributes, so does an extra one;
  * per attribute (shape, colour, size, position): the share of expected objects whose partner
    agrees on it (an expected object without partner counts as wrong);
  * `count`: as many objects detected as expected.

Captions: `caption_scores` checks, for each ground-truth object, whether its colour word, its
shape word and its position (any of the nine grid-cell names, longest match first, so "at the top
left" reads as "top left", not "top") appear in the caption. Word presence, not binding: "a red
square and a blue circle" for a blue square and a red circle scores full marks on words (the
exact-match figure, `parse_caption` equal to the scene, catches that). `attributes` is the mean
over colour, shape and position; size is reported beside it.
"""

from __future__ import annotations

import itertools
import re
from typing import Sequence

import numpy as np

from cm3leon_jax.data.sources.shapes import scenes, verifier

ObjectKey = tuple[str, str, str, int]
ATTRIBUTES = ("shape", "colour", "size", "position")
CAPTION_ATTRIBUTES = ("colour", "shape", "position")  # the headline caption attributes
_POSITION_RE = re.compile(r"\b(" + "|".join(sorted(scenes.POSITIONS, key=len, reverse=True))
                          + r")\b")
_MAX_DETECTIONS = 9  # one per grid cell; more is noise and is scored as extra objects anyway


def references(objects: Sequence[ObjectKey]) -> list[str]:
    """Every caption template filled with the scene's objects (in stored order): the reference
    set for CIDEr-D (COCO has five human captions per image; `shapes` has these four)."""
    objs = [scenes.Obj(shape, colour, size, int(position))
            for shape, colour, size, position in objects]
    phrases = scenes.join_phrases([o.phrase() for o in objs])
    return [template.format(objects=phrases) for template in scenes.CAPTION_TEMPLATES]


def object_scores(detected: Sequence[ObjectKey], expected: Sequence[ObjectKey]) -> dict:
    """Per-image scores of detected objects against the expected ones (module docstring)."""
    detected = [tuple(d) for d in detected][:_MAX_DETECTIONS]
    expected = [tuple(e) for e in expected]
    if not expected:
        raise ValueError("object_scores needs at least one expected object")

    def agree(d, e) -> np.ndarray:
        return np.asarray([d[i] == e[i] for i in range(4)], bool)

    best_total, best_pairs = -1, []
    pairs_needed = min(len(detected), len(expected))
    for chosen in itertools.permutations(range(len(detected)), pairs_needed):
        pairs = [(j, k) for k, j in enumerate(chosen)]  # expected k <-> detected j
        total = sum(int(agree(detected[j], expected[k]).sum()) for j, k in pairs)
        if total > best_total:
            best_total, best_pairs = total, pairs
    per_attribute = np.zeros(4)
    for j, k in best_pairs:
        per_attribute += agree(detected[j], expected[k])
    result = {name: float(per_attribute[i] / len(expected)) for i, name in enumerate(ATTRIBUTES)}
    result["attributes"] = float(max(best_total, 0) / (4 * max(len(expected), len(detected))))
    result["count"] = float(len(detected) == len(expected))
    return result


def caption_scores(caption: str, expected: Sequence[ObjectKey]) -> dict:
    """Per-caption scores against the ground-truth objects (module docstring)."""
    text = caption.lower()
    words = set(re.findall(r"[a-z]+", text))
    positions = set(_POSITION_RE.findall(text))
    hits = {name: [] for name in ATTRIBUTES}
    for shape, colour, size, position in expected:
        hits["shape"].append(shape in words)
        hits["colour"].append(colour in words)
        hits["size"].append(size in words)
        hits["position"].append(scenes.POSITIONS[int(position)] in positions)
    result = {name: float(np.mean(values)) for name, values in hits.items()}
    result["attributes"] = float(np.mean([result[name] for name in CAPTION_ATTRIBUTES]))
    parsed = scenes.parse_caption(caption)
    result["exact"] = float(parsed is not None and
                            sorted(parsed) == sorted(tuple(e) for e in expected))
    result["parsed"] = float(parsed is not None)
    return result


def mean_scores(rows: Sequence[dict]) -> dict:
    """Per-key mean of per-example score dicts."""
    if not rows:
        return {}
    return {key: float(np.mean([row[key] for row in rows])) for key in rows[0]}


def judge_images(images: np.ndarray, expected: Sequence[Sequence[ObjectKey]]
                 ) -> tuple[dict, list[bool]]:
    """Verifier figures of generated images against each one's expected objects: (means of
    exact match, attributes, count and each attribute; per-image exact flags)."""
    rows, exact = [], []
    for image, objects in zip(images, expected):
        detection = verifier.detect(image)
        match = detection.valid and detection.objects == tuple(sorted(map(tuple, objects)))
        rows.append(object_scores(detection.objects, objects))
        exact.append(bool(match))
    means = mean_scores(rows)
    figures = {"exact_match": float(np.mean(exact)),
               "attribute_accuracy": means.pop("attributes"),
               "count_accuracy": means.pop("count")}
    figures.update({f"{name}_accuracy": value for name, value in means.items()})
    return figures, exact


def no_verifier(source: str) -> str:
    """Why a verifier figure is missing on data other than `shapes` (said, never a NaN)."""
    return (f"no verifier for this data (data.source={source}): exact match and attribute "
            "accuracy need the `shapes` verifier and scene metadata")
