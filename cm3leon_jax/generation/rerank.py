"""Choosing among N sampled images per prompt (the paper samples 8 and keeps the best by CLIP).

The score is the retrieval bi-encoder's text-image cosine (`retrieval/retriever.text_image_scores`:
the same CLIP-style model that picks retrieved documents, our "CLIP"). A workdir without a trained
encoder has no such judge; then samples are ranked by the model's own mean log-probability per
generated token (the conditional stream's, `decode.DecodeOutput.log_probs`), and the result says
which score it used, so a reader never mistakes one for the other.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

CLIP = "clip"
LOG_PROB = "mean_log_prob"


def clip_scores(biencoder, prompts: Sequence[str], images: np.ndarray) -> np.ndarray:
    """float32 [n, N]: cosine of prompt i's text embedding with each of its N images.

    images: uint8 [n, N, H, W, 3] (resized to the encoder's input size inside the encoder)."""
    from cm3leon_jax.retrieval.retriever import text_image_scores  # noqa: PLC0415

    images = np.asarray(images)
    if images.ndim != 5 or images.shape[0] != len(prompts):
        raise ValueError(f"images must be [{len(prompts)}, N, H, W, 3], got {images.shape}")
    count, per_prompt = images.shape[:2]
    texts = [prompt for prompt in prompts for _ in range(per_prompt)]
    scores = text_image_scores(biencoder, texts, images.reshape(-1, *images.shape[2:]))
    return np.asarray(scores, np.float32).reshape(count, per_prompt)


def order(scores: np.ndarray) -> np.ndarray:
    """int [n, N]: sample indices best first (stable: ties keep sampling order)."""
    return np.argsort(-np.asarray(scores), axis=-1, kind="stable")


def rank(prompts: Sequence[str], images: np.ndarray, mean_log_probs: np.ndarray,
         biencoder: Optional[object] = None) -> tuple[np.ndarray, np.ndarray, str]:
    """(order [n, N], scores [n, N], score name): CLIP when a bi-encoder is given, else the
    model's mean log-probability per token."""
    if biencoder is not None:
        scores = clip_scores(biencoder, prompts, images)
        return order(scores), scores, CLIP
    scores = np.asarray(mean_log_probs, np.float32)
    return order(scores), scores, LOG_PROB
