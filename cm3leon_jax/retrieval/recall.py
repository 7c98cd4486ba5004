"""Retrieval recall@k of a bi-encoder on paired (caption, image) examples.

Recall counts a query as found when a right answer is among its k best-scored candidates. On
`shapes` and most captioned sets each caption belongs to one image, so the right answer is the
pair's own; user data sets often give many images one caption ("a photo of a cat"), and then
every image of that caption is a right answer for it (and the caption for each of them): without
that, recall would punish an encoder for ranking an equally right image first.
"""

from __future__ import annotations

import collections
from typing import Optional, Sequence

import numpy as np


def recall_at(similarity: np.ndarray, ks: tuple[int, ...] = (1, 5),
              groups: Optional[Sequence] = None) -> dict[int, float]:
    """Share of rows with a right column among their top-k scores (ties in the row's favour).

    Right columns: the row's own (the diagonal); with `groups` (one label per row, the same for
    its column: e.g. the caption), every column of the row's group. A data set where many
    images share one caption has that many right answers per caption, not one."""
    count = similarity.shape[0]
    if groups is None:
        right = np.eye(count, similarity.shape[1], dtype=bool)
    else:
        labels = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)[1]
        right = labels[:, None] == labels[None, :]
    best_right = np.where(right, similarity, -np.inf).max(axis=1, keepdims=True)
    rank = (np.where(right, -np.inf, similarity) > best_right).sum(axis=1)
    return {k: float((rank < k).mean()) for k in ks}


def recall_figures(similarity: np.ndarray, captions: Sequence) -> dict[str, float]:
    """Recall@1/5 both ways of a [texts, images] similarity of paired examples, examples that
    share a caption counting as right answers for each other (`recall_at` groups)."""
    text_to_image = recall_at(similarity, groups=captions)
    image_to_text = recall_at(similarity.T, groups=captions)
    counts = collections.Counter(str(c) for c in captions)
    shared = sum(n for n in counts.values() if n > 1)
    return {"text_to_image_recall@1": text_to_image[1], "text_to_image_recall@5": text_to_image[5],
            "image_to_text_recall@1": image_to_text[1], "image_to_text_recall@5": image_to_text[5],
            "shared_caption_share": shared / max(len(captions), 1)}
