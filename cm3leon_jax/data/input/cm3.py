"""CM3 causal-masked objective: cut spans out of a document and move them to its end.

A left-to-right model trained on `prefix <mask:0> suffix <mask:0> span <eos>` learns to *infill*:
at inference it is shown the document with a hole and asked to continue after the second
`<mask:0>`. This module does the token-level transform on one document (numpy, vectorised so it
runs inside tf.data through `tf.numpy_function`: the per-token work is numpy, the Python work is
O(number of spans)), its exact inverse `uncm3`, and `cm3_mask_tf`, the tf.data wrapper.

The transform, on an int id array `doc` (one training example as laid out by `data/input/layout.py`,
e.g. `ret_1 <break> ret_2 <break> caption <break> <boi> codes <eoi> <eos>`):

1. With probability `unmasked_rate` the document is left alone (plain causal LM). Otherwise draw
   n = clamp(Poisson(poisson_lambda), 1, max_spans) (CM3: Poisson(1) clamped to [1, 16]).
2. The document is cut into *segments*: maximal runs of content tokens, where every special id
   in `SpecialIds` (`<pad>`, `<eos>`, `<break>`, `<boi>`, `<eoi>`, `<mask>`, the sentinels) ends a
   run. A text run between two `<break>`s is one segment; the codes between `<boi>` and `<eoi>`
   are one segment. Spans lie inside one segment, so a span never crosses or includes `<break>`, an
   image's `<boi>`/`<eoi>`, `<eos>` or `<pad>`, and never mixes two modalities.
3. Span positions. The CM3 paper draws both ends of each span uniformly over the document and
   rejects intersecting spans. Here the same is done per segment and without rejection: a segment
   of m tokens has m + 1 cut points (gaps between tokens and its two ends) and room for
   (m + 1) // 2 separated spans. The n spans are assigned to segments by drawing n distinct slots
   among all segments' room (so a segment is chosen about in proportion to its length, and never
   gets more spans than fit); a segment given k spans draws 2k distinct cut points uniformly
   (Floyd's algorithm, O(k) even in a 1,024-code image) and pairs them in order, which is uniform
   over all ways to place k separated spans in it. A lone span's length thus has the triangular
   law of |U1 - U2| (mean about m / 3): few, long spans, as CM3 intends. A document with less
   room than n gets fewer spans; one with no content gets none.
   `max_span_fraction` < 1 shortens (from the end) any span longer than that share of its segment.
4. Spans are numbered left to right. Each is replaced in place by its sentinel `<mask:i>`, and
   `<mask:i> span_i` pairs are appended after the document body, in order. If the document ends
   in `<eos>` (trailing `<pad>`s ignored), the `<eos>` stays last, after the spans: it then marks
   "document and all its spans done", and `uncm3` finds the end of the last span by it. Trailing
   `<pad>`s stay at the very end.

Loss weights: 1 on every token (CM3leon trains plain next-token cross-entropy on the whole result),
0 on `<pad>`, and `placeholder_loss_weight` on the in-body sentinels (the CM3 paper uses 0 there:
the placeholder's position is random, so predicting it teaches nothing).

Special ids come in through `SpecialIds`, which `cm3leon_jax/vocab.py` provides; this module does
not depend on the vocabulary.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
from typing import Any, Sequence

import numpy as np

from cm3leon_jax.config import CM3Config


@dataclasses.dataclass(frozen=True)
class SpecialIds:
    """The special token ids the data transforms need; the unified vocabulary provides them.

    Contract: all ids are non-negative and pairwise distinct; `sentinels[i]` is `<mask:i>` and there
    must be at least `max_spans` of them. Every id listed here is *structure*, never content: CM3
    spans never include one.

    pad: `<pad>`, fills rows; loss weight 0.
    eos: `<eos>`, ends a training example (after its CM3 spans).
    break_: `<break>`, separates modalities inside a document and documents inside an example.
    boi / eoi: begin / end of image, wrapped around an image's codes.
    sentinels: `<mask:0>`, `<mask:1>`, ... in order.
    mask: the plain `<mask>` (the condition of classifier-free guidance's unconditional stream),
      if the vocabulary has one: a placeholder, not content, so spans never include it either.
    """

    pad: int
    eos: int
    break_: int
    boi: int
    eoi: int
    sentinels: tuple[int, ...]
    mask: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "sentinels", tuple(int(s) for s in self.sentinels))
        named = {"pad": self.pad, "eos": self.eos, "break_": self.break_, "boi": self.boi,
                 "eoi": self.eoi}
        if self.mask is not None:
            named["mask"] = self.mask
        named.update({f"sentinels[{i}]": s for i, s in enumerate(self.sentinels)})
        if not self.sentinels:
            raise ValueError("SpecialIds.sentinels is empty: CM3 needs <mask:0>..<mask:K>")
        for name, value in named.items():
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"SpecialIds.{name}={value!r}: must be a non-negative int")
        seen: dict[int, str] = {}
        for name, value in named.items():
            if value in seen:
                raise ValueError(f"SpecialIds.{name}={value} is also SpecialIds.{seen[value]}: "
                                 "special ids must be distinct")
            seen[value] = name

    @property
    def structural(self) -> tuple[int, ...]:
        """Every special id: the tokens that end a CM3 segment."""
        optional = () if self.mask is None else (self.mask,)
        return (self.pad, self.eos, self.break_, self.boi, self.eoi) + optional + self.sentinels

    @functools.cached_property
    def _structural_table(self) -> np.ndarray:
        """`take(table, ids, mode="clip")` is True on special ids: one gather, not np.isin."""
        table = np.zeros(max(self.structural) + 2, dtype=bool)
        table[list(self.structural)] = True
        return table

    @functools.cached_property
    def sentinel_array(self) -> np.ndarray:
        """The sentinels as an int32 array (`sentinel_array[i]` is `<mask:i>`)."""
        return np.asarray(self.sentinels, np.int32)

    @functools.cached_property
    def _sentinel_table(self) -> np.ndarray:
        table = np.zeros(max(self.sentinels) + 2, dtype=bool)
        table[list(self.sentinels)] = True
        return table

    def is_structural(self, ids: np.ndarray) -> np.ndarray:
        """Boolean mask of the special ids in non-negative `ids` (ids past the table: content)."""
        return np.take(self._structural_table, ids, mode="clip")

    def is_sentinel(self, ids: np.ndarray) -> np.ndarray:
        return np.take(self._sentinel_table, ids, mode="clip")


def rng_from_seed(seed: Any) -> np.random.Generator:
    """A numpy Generator from an int or an array of ints (e.g. a `[2]` int64 per-example seed).

    Negative values wrap modulo 2**64, so any tf int64 seed works. The same seed gives the same
    generator on every machine, which makes `cm3_mask_tf` stateless and reproducible.
    """
    words = [int(word) % (1 << 64) for word in np.ravel(np.asarray(seed))]
    return np.random.default_rng(np.random.SeedSequence(words))


def _check_ids(ids: Any) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"CM3 works on one document (a 1-D id array), got shape {ids.shape}")
    if ids.dtype.kind not in "iu":
        raise ValueError(f"token ids must be integers, got dtype {ids.dtype}")
    if ids.size and ids.min() < 0:
        raise ValueError(f"token ids must be non-negative, got {int(ids.min())}")
    return ids


def _body_end(ids: np.ndarray, special: SpecialIds) -> int:
    """Where the spans go: before a final `<eos>` (trailing `<pad>`s ignored), else the end."""
    if len(ids) and ids[-1] != special.pad:
        content_end = len(ids)
    else:
        not_pad = np.flatnonzero(ids != special.pad)
        if not not_pad.size:
            return 0
        content_end = int(not_pad[-1]) + 1
    return content_end - 1 if ids[content_end - 1] == special.eos else content_end


def content_segments(ids: np.ndarray, special: SpecialIds) -> tuple[np.ndarray, np.ndarray]:
    """(starts, lengths) of the maximal runs of non-special tokens: where spans may lie."""
    content = ~special.is_structural(ids)
    if not len(content):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    changes = np.flatnonzero(content[1:] != content[:-1]) + 1
    bounds = np.concatenate(([0] if content[0] else [], changes,
                             [len(content)] if content[-1] else [])).astype(np.int64)
    return bounds[0::2], bounds[1::2] - bounds[0::2]


def draw_num_spans(config: CM3Config, rng: np.random.Generator) -> int:
    """0 with probability `unmasked_rate`, else clamp(Poisson(poisson_lambda), 1, max_spans)."""
    if rng.random() < config.unmasked_rate:
        return 0
    return int(min(max(rng.poisson(config.poisson_lambda), 1), config.max_spans))


def _sample_without_replacement(population: int, count: int, uniforms: np.ndarray) -> list[int]:
    """`count` distinct ints of range(population), every subset equally likely (Floyd's algorithm).

    O(count) whatever the population (a 1,024-code image costs no more than a 3-token caption);
    `uniforms` are `count` draws of U[0, 1). Returns the subset unsorted.
    """
    chosen: set[int] = set()
    for uniform, top in zip(uniforms.tolist(), range(population - count, population)):
        pick = int(uniform * (top + 1))
        chosen.add(top if pick in chosen else pick)
    return list(chosen)


def _draw_spans(ids: np.ndarray, special: SpecialIds, config: CM3Config,
                rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """`draw_spans` on checked ids, as Python lists (n is small; lists are cheaper than arrays)."""
    num_spans = draw_num_spans(config, rng)
    if num_spans == 0:
        return [], []
    seg_starts, seg_lengths = content_segments(ids, special)
    room_end = np.cumsum((seg_lengths + 1) // 2)
    total_room = int(room_end[-1]) if len(room_end) else 0
    if total_room == 0:
        return [], []
    num_spans = min(num_spans, total_room)
    uniforms = rng.random(3 * num_spans)  # One draw: n for the slots, 2 per span for its cuts.
    slots = _sample_without_replacement(total_room, num_spans, uniforms[:num_spans])
    spans_in_segment = collections.Counter(
        np.searchsorted(room_end, slots, side="right").tolist())
    starts: list[int] = []
    ends: list[int] = []
    used = num_spans
    for segment, count in sorted(spans_in_segment.items()):
        length, first = int(seg_lengths[segment]), int(seg_starts[segment])
        cuts = sorted(_sample_without_replacement(length + 1, 2 * count,
                                                  uniforms[used:used + 2 * count]))
        used += 2 * count
        longest = (max(1, math.floor(config.max_span_fraction * length))
                   if config.max_span_fraction < 1.0 else length)
        for start, end in zip(cuts[0::2], cuts[1::2]):
            starts.append(first + start)
            ends.append(first + min(end, start + longest))
    return starts, ends


def draw_spans(ids: Any, special: SpecialIds, config: CM3Config,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draws the CM3 spans of one document (see the module docstring for the law).

    Returns `(starts, ends)`, int64 arrays sorted left to right, span i = `ids[starts[i]:ends[i]]`;
    spans are non-empty, separated by at least one token and each inside one content segment.
    Finding the segments is vectorised over tokens; the rest costs O(number of spans).
    """
    starts, ends = _draw_spans(_check_ids(ids), special, config, rng)
    return np.array(starts, np.int64), np.array(ends, np.int64)


def _move_spans(ids: np.ndarray, starts: list[int], ends: list[int], body_end: int,
                special: SpecialIds,
                placeholder_loss_weight: float) -> tuple[np.ndarray, np.ndarray]:
    """`apply_spans` on valid spans: one concatenation of 4n + 2 slices, then the weights."""
    if not starts:
        return ids.astype(np.int32), (ids != special.pad).astype(np.float32)
    sentinels = special.sentinel_array
    kept, moved, placeholder_at = [], [], []
    position = masked = 0
    for index, (start, end) in enumerate(zip(starts, ends)):
        kept += [ids[position:start], sentinels[index:index + 1]]
        moved += [sentinels[index:index + 1], ids[start:end]]
        placeholder_at.append(start - masked + index)
        masked += end - start
        position = end
    kept.append(ids[position:body_end])
    out = np.concatenate(kept + moved + [ids[body_end:]]).astype(np.int32, copy=False)
    weights = (out != special.pad).astype(np.float32)
    weights[placeholder_at] = placeholder_loss_weight
    return out, weights


def apply_spans(ids: Any, starts: Any, ends: Any, special: SpecialIds,
                placeholder_loss_weight: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Moves spans `ids[starts[i]:ends[i]]` to the end behind sentinels; returns (ids, weights).

    The spans must be sorted, non-empty, non-overlapping and free of special ids (as `draw_spans`
    gives; checked here, with a ValueError naming the problem). Output:
    `body-with-<mask:i> <mask:0> span_0 ... <mask:n-1> span_n-1 [<eos>] [<pad>...]`, int32, 2n
    tokens longer than the input (two sentinels per span); weights float32 (module docstring).
    """
    ids = _check_ids(ids)
    starts = [int(v) for v in np.ravel(starts)]
    ends = [int(v) for v in np.ravel(ends)]
    if len(starts) > len(special.sentinels):
        raise ValueError(f"{len(starts)} spans but only {len(special.sentinels)} sentinels: the "
                         "vocabulary needs at least config.cm3.max_spans <mask:i> tokens")
    body_end = _body_end(ids, special)
    bounds = [0] + [v for span in zip(starts, ends) for v in span] + [body_end]
    if len(ends) != len(starts) or any(a > b for a, b in zip(bounds, bounds[1:])) or any(
            a == b for a, b in zip(starts, ends)):
        raise ValueError(f"spans must be sorted, non-empty, non-overlapping and inside the body "
                         f"[0, {body_end}): starts={starts}, ends={ends}")
    if any(special.is_structural(ids[a:b]).any() for a, b in zip(starts, ends)):
        raise ValueError("a span contains a special token (<break>, <boi>, <eoi>, <eos>, <pad>, "
                         "<mask> or a sentinel): spans must stay inside one text run or one image")
    return _move_spans(ids, starts, ends, body_end, special, placeholder_loss_weight)


def cm3_mask(ids: Any, special: SpecialIds, config: CM3Config,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """CM3-masks one document: returns (int32 ids, float32 loss weights), 2n tokens longer.

    Raises ValueError if the document already holds a sentinel (masking applies once, and
    `uncm3` could not tell the spans apart) or the vocabulary has fewer sentinels than max_spans.
    """
    ids = _check_ids(ids)
    if len(special.sentinels) < config.max_spans:
        raise ValueError(f"config.cm3.max_spans={config.max_spans} but the vocabulary has only "
                         f"{len(special.sentinels)} sentinels <mask:i>")
    if special.is_sentinel(ids).any():
        raise ValueError("the document already contains a <mask:i> sentinel; CM3 masking applies "
                         "once, to unmasked documents")
    starts, ends = _draw_spans(ids, special, config, rng)
    return _move_spans(ids, starts, ends, _body_end(ids, special), special,
                       config.placeholder_loss_weight)


def _spans_end(ids: np.ndarray, last_header: int, special: SpecialIds) -> int:
    """End of the last appended span: the first `<eos>`/`<pad>` after its sentinel, or the end."""
    after_last = ids[last_header + 1:]
    stop = np.flatnonzero((after_last == special.eos) | (after_last == special.pad))
    return last_header + 1 + (int(stop[0]) if stop.size else len(after_last))


def uncm3(ids: Any, special: SpecialIds) -> np.ndarray:
    """Inverse of `cm3_mask`: splices the appended spans back into their placeholders.

    Works on a masked document (with its trailing `<eos>`/`<pad>`s, kept as they are) and on a
    model's completed infilling, `prefix <mask:0> suffix <mask:0> span <eos>`. The last span ends at
    the first `<eos>` or `<pad>` after the last sentinel, or at the end. Raises ValueError when the
    sentinels do not come as `<mask:0..n-1>` in the body then `<mask:0..n-1>` after it.
    """
    ids = _check_ids(ids)
    sentinel_at = np.flatnonzero(special.is_sentinel(ids))
    if not sentinel_at.size:
        return ids.copy()
    if len(sentinel_at) % 2:
        raise ValueError(f"odd number ({len(sentinel_at)}) of sentinels: every <mask:i> must "
                         "appear once in the body and once before its span")
    num_spans = len(sentinel_at) // 2
    placeholder_at, header_at = sentinel_at[:num_spans], sentinel_at[num_spans:]
    expected = np.asarray(special.sentinels[:num_spans])
    if not (np.array_equal(ids[placeholder_at], expected)
            and np.array_equal(ids[header_at], expected)):
        raise ValueError("sentinels out of order: expected <mask:0..n-1> in the body and again "
                         f"before the spans, got ids {ids[sentinel_at].tolist()}")
    span_bounds = header_at.tolist() + [_spans_end(ids, int(header_at[-1]), special)]
    pieces, position = [], 0
    for index, placeholder in enumerate(placeholder_at.tolist()):
        pieces += [ids[position:placeholder], ids[span_bounds[index] + 1:span_bounds[index + 1]]]
        position = placeholder + 1
    pieces += [ids[position:span_bounds[0]], ids[span_bounds[-1]:]]
    return np.concatenate(pieces)


def cm3_mask_tf(ids: Any, seed: Any, special: SpecialIds, config: CM3Config) -> tuple[Any, Any]:
    """tf.data wrapper of `cm3_mask`: `(ids [None] int32, weights [None] float32)`.

    `seed` is a per-example int tensor (scalar or vector, e.g. `[base_seed, example_index]` from
    `Dataset.enumerate`); the result is `cm3_mask(ids, special, config, rng_from_seed(seed))`,
    so it is the same on every run and in every tf.data order. The op is declared stateless.
    """
    import tensorflow as tf  # Lazily: numpy users of this module should not pay for TF's import.

    def masked(ids_np: np.ndarray, seed_np: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return cm3_mask(ids_np, special, config, rng_from_seed(seed_np))

    out_ids, weights = tf.numpy_function(masked, [tf.cast(ids, tf.int32), seed],
                                         [tf.int32, tf.float32], stateful=False, name="cm3_mask")
    out_ids.set_shape([None])
    weights.set_shape([None])
    return out_ids, weights


def cm3_mask_batch_tf(ids: Any, seeds: Any, special: SpecialIds,
                      config: CM3Config) -> tuple[Any, Any]:
    """Batched `cm3_mask_tf`: one `tf.numpy_function` call for a whole ragged batch.

    The call itself costs more than masking a 4,096-token document (docs/BENCHMARKS.md), so a
    pipeline that masks many documents should batch them: `ds.ragged_batch(64).map(lambda ids,
    seeds: cm3_mask_batch_tf(ids, seeds, ...)).unbatch()`. ids: `tf.RaggedTensor` `[batch, None]`;
    seeds: `[batch]` or `[batch, k]` ints. Returns ragged (ids int32, weights float32) whose row i
    is `cm3_mask(ids[i], special, config, rng_from_seed(seeds[i]))`, as `cm3_mask_tf` gives.
    """
    import tensorflow as tf  # Lazily: numpy users of this module should not pay for TF's import.

    def masked(values: np.ndarray, splits: np.ndarray, seeds_np: np.ndarray):
        rows = [cm3_mask(values[a:b], special, config, rng_from_seed(seed))
                for a, b, seed in zip(splits[:-1], splits[1:], seeds_np)]
        new_splits = np.cumsum([0] + [len(row_ids) for row_ids, _ in rows], dtype=np.int64)
        if not rows:
            return np.zeros(0, np.int32), np.zeros(0, np.float32), new_splits
        return (np.concatenate([row_ids for row_ids, _ in rows]),
                np.concatenate([weights for _, weights in rows]), new_splits)

    ids = tf.cast(ids, tf.int32)
    values, weights, splits = tf.numpy_function(
        masked, [ids.values, tf.cast(ids.row_splits, tf.int64), seeds],
        [tf.int32, tf.float32, tf.int64], stateful=False, name="cm3_mask_batch")
    for tensor in (values, weights, splits):
        tensor.set_shape([None])
    return (tf.RaggedTensor.from_row_splits(values, splits, validate=False),
            tf.RaggedTensor.from_row_splits(weights, splits, validate=False))


def spans_of(masked: Sequence[int] | np.ndarray, special: SpecialIds) -> list[np.ndarray]:
    """The appended spans of a masked document, in order (for tests, inspection and evaluation)."""
    masked = _check_ids(masked)
    sentinel_at = np.flatnonzero(special.is_sentinel(masked))
    num_spans = len(sentinel_at) // 2
    if not num_spans:
        return []
    header_at = sentinel_at[num_spans:]
    tail_end = _spans_end(masked, int(header_at[-1]), special)
    bounds = np.append(header_at, tail_end)
    return [masked[bounds[i] + 1:bounds[i + 1]] for i in range(num_spans)]
