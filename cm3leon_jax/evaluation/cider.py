"""CIDEr-D (Vedantam et al. 2015), as the COCO caption evaluation computes it.

A numpy/Python re-implementation of `pycocoevalcap`'s `CiderScorer` (not a dependency: it is
small, and the package pulls Java for its tokenizer). Per n in 1..4, each caption is a vector of
n-gram counts weighted by TF-IDF, where the document frequency of an n-gram is the number of
*test images* whose reference captions contain it (so the score depends on the evaluated set, as
in COCO). The score of a candidate against one reference is, per n, the cosine of the two vectors
with the candidate's weights clipped to the reference's (the "-D": repeating a word earns nothing
more), times a Gaussian length penalty exp(-(l_c - l_r)² / (2·6²)); averaged over n, over the
references, and times 10. Two quirks of the reference code are kept so figures are comparable:
the "length" is the number of bigrams, and an n-gram seen in no reference gets df = 1.

Tokenisation: lower case, punctuation removed, split on whitespace (what the PTB tokenizer does to
our plain captions).

With a single test image every document frequency equals the image count, every weight is
log(1) - log(1) = 0, and CIDEr is 0: evaluate at least a handful of images.
"""

from __future__ import annotations

import collections
import math
import re
from typing import Sequence

import numpy as np

MAX_N = 4
SIGMA = 6.0
_PUNCTUATION = re.compile(r"[^\w\s]")


def tokenize(text: str) -> list[str]:
    return _PUNCTUATION.sub(" ", text.lower()).split()


def ngrams(words: Sequence[str], max_n: int = MAX_N) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    for n in range(1, max_n + 1):
        for start in range(len(words) - n + 1):
            counts[tuple(words[start:start + n])] += 1
    return counts


def _vector(counts: collections.Counter, df: dict, log_images: float):
    vec = [dict() for _ in range(MAX_N)]
    norm = [0.0] * MAX_N
    length = 0
    for gram, tf in counts.items():
        n = len(gram) - 1
        weight = float(tf) * (log_images - math.log(max(1.0, df.get(gram, 0.0))))
        vec[n][gram] = weight
        norm[n] += weight ** 2
        if n == 1:  # pycocoevalcap's length: bigram count (kept for comparability)
            length += tf
    return vec, [math.sqrt(x) for x in norm], length


def _similarity(hyp, ref) -> np.ndarray:
    (vec_h, norm_h, len_h), (vec_r, norm_r, len_r) = hyp, ref
    delta = float(len_h - len_r)
    values = np.zeros(MAX_N)
    for n in range(MAX_N):
        for gram, weight in vec_h[n].items():
            if gram in vec_r[n]:
                values[n] += min(weight, vec_r[n][gram]) * vec_r[n][gram]
        if norm_h[n] != 0 and norm_r[n] != 0:
            values[n] /= norm_h[n] * norm_r[n]
        values[n] *= math.e ** (-(delta ** 2) / (2 * SIGMA ** 2))
    return values


def cider_d(candidates: Sequence[str], references: Sequence[Sequence[str]]
            ) -> tuple[float, np.ndarray]:
    """(corpus CIDEr-D, per-image scores [n]): candidates[i] against references[i] (>= 1 each)."""
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} reference lists")
    if not candidates:
        raise ValueError("CIDEr-D needs at least one caption")
    if any(not refs for refs in references):
        raise ValueError("every image needs at least one reference caption")
    ref_counts = [[ngrams(tokenize(r)) for r in refs] for refs in references]
    df: collections.Counter = collections.Counter()
    for counts in ref_counts:
        for gram in set(g for c in counts for g in c):
            df[gram] += 1
    log_images = math.log(float(len(candidates)))
    scores = np.zeros(len(candidates))
    for i, (candidate, counts) in enumerate(zip(candidates, ref_counts)):
        hyp = _vector(ngrams(tokenize(candidate)), df, log_images)
        total = np.zeros(MAX_N)
        for ref in counts:
            total += _similarity(hyp, _vector(ref, df, log_images))
        scores[i] = float(np.mean(total)) / len(counts) * 10.0
    return float(scores.mean()), scores
