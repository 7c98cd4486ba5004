"""Packing variable-length documents into fixed `seq_len` training rows.

Every row is a dict of four `[seq_len]` arrays:

* `ids` (int32): tokens; `pad_id` on padding.
* `segment_ids` (int32): 1, 2, 3, ... for the documents of the row in the order they were placed,
  0 on padding. The model's attention must not cross segments.
* `positions` (int32): 0, 1, 2, ... restarting at every segment (0 on padding). A piece of a
  document continued from the previous row also restarts at 0: the model cannot see that row.
* `weights` (float32): the document's own loss weights (1 where it has none), but 0 on padding and
  0 on the first token of every segment. `weights[t]` is the weight of the loss for predicting
  `ids[t]` from the tokens before it *in its segment*; a segment's first token has nothing before it
  in its segment. So a train step can use `ids[:, 1:]` as targets with `weights[:, 1:]` and never
  learns to predict one document from another.

Two modes (`config.cm3.pack`):

* pack=True: greedy first-fit. Up to `max_open_rows` rows are open at once; a document goes into the
  oldest open row it fits, else into a new row. A row leaves as soon as it is exactly full; when a
  new row is needed and `max_open_rows` are open, the fullest open row leaves (it wastes least).
  At the end of the input the remaining rows leave, oldest first. With `allow_split_documents` a
  document instead fills the one open row and continues into the next (next-fit, no padding except
  at the very end).
* pack=False: one document per row, padded (a longer document fills several rows when it may be
  split).

A document longer than `seq_len` that may not be split is truncated to its first `seq_len` tokens or
dropped (`overlong`); the packer counts both (see `PACKING_COUNTERS`).

The packing logic is one function, `pack_step(state arrays, document)`, which updates the state
and returns the rows the document finished; it reads nothing else. `GreedyPacker` holds the state in
numpy; `pack_dataset` threads the same state through `tf.data.Dataset.scan` as tensors, so the
tf.data transformation emits exactly the rows of the numpy packer, in the same order, on every run.
Because the open rows live in the scan state, a `tf.train.Checkpoint` of the tf.data iterator holds
them, and a restored iterator resumes with exactly the rows the original would have emitted.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Iterator

import numpy as np

from cm3leon_jax.config import CM3_OVERLONG_POLICIES, CM3Config

# Running totals kept by the packer, in this order in `GreedyPacker.stats` and the tf counters.
PACKING_COUNTERS = (
    "documents",          # documents seen (including dropped and empty ones)
    "empty",              # documents with no tokens (skipped)
    "truncated",          # documents cut to seq_len (overlong="truncate")
    "dropped",            # documents left out (overlong="drop")
    "split",              # documents continued across rows (allow_split_documents=True)
    "rows",               # rows emitted
    "tokens",             # document tokens in emitted rows
    "padding",            # padding tokens in emitted rows
)
_COUNTER = {name: i for i, name in enumerate(PACKING_COUNTERS)}
ROW_FEATURES = ("ids", "segment_ids", "positions", "weights")


@dataclasses.dataclass(frozen=True)
class PackingSpec:
    """How to pack; see the module docstring. `pad_id` is `<pad>` of the vocabulary (0 there)."""

    seq_len: int
    pack: bool = True
    allow_split_documents: bool = False
    overlong: str = "truncate"
    max_open_rows: int = 8
    pad_id: int = 0

    def __post_init__(self):
        if self.seq_len <= 0:
            raise ValueError(f"seq_len={self.seq_len}: must be positive")
        if self.overlong not in CM3_OVERLONG_POLICIES:
            raise ValueError(f"overlong={self.overlong!r}: must be one of "
                             f"{', '.join(map(repr, CM3_OVERLONG_POLICIES))}")
        if self.max_open_rows < 1:
            raise ValueError(f"max_open_rows={self.max_open_rows}: must be >= 1")

    @classmethod
    def from_config(cls, config: CM3Config, pad_id: int = 0) -> "PackingSpec":
        return cls(seq_len=config.seq_len, pack=config.pack,
                   allow_split_documents=config.allow_split_documents, overlong=config.overlong,
                   max_open_rows=config.max_open_rows, pad_id=pad_id)

    @property
    def open_rows(self) -> int:
        """Row slots in the state: splitting and padding modes only ever use one."""
        return self.max_open_rows if self.pack and not self.allow_split_documents else 1


# State: (ids [R, L] int32, weights [R, L] float32, segment_ids [R, L] int32, fill [R] int32,
# opened [R] int64 (serial number of the row, -1 when the slot is free), counters [C + 1] int64
# (PACKING_COUNTERS, then the next row serial)). A plain tuple so tf.data can carry it in `scan`.
State = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def initial_state(spec: PackingSpec) -> State:
    rows, length = spec.open_rows, spec.seq_len
    return (np.full((rows, length), spec.pad_id, np.int32), np.zeros((rows, length), np.float32),
            np.zeros((rows, length), np.int32), np.zeros(rows, np.int32),
            np.full(rows, -1, np.int64), np.zeros(len(PACKING_COUNTERS) + 1, np.int64))


class _Rows:
    """Finished rows in emission order, plus the bookkeeping of taking a row out of the state."""

    def __init__(self, spec: PackingSpec, state: State):
        self.spec, self.state = spec, state
        self.ids: list[np.ndarray] = []
        self.weights: list[np.ndarray] = []
        self.segment_ids: list[np.ndarray] = []

    def emit(self, slot: int) -> None:
        ids, weights, segment_ids, fill, opened, counters = self.state
        self.ids.append(ids[slot].copy())
        self.weights.append(weights[slot].copy())
        self.segment_ids.append(segment_ids[slot].copy())
        counters[_COUNTER["rows"]] += 1
        counters[_COUNTER["tokens"]] += fill[slot]
        counters[_COUNTER["padding"]] += self.spec.seq_len - fill[slot]
        ids[slot] = self.spec.pad_id
        weights[slot] = 0
        segment_ids[slot] = 0
        fill[slot] = 0
        opened[slot] = -1

    def finish(self) -> dict[str, np.ndarray]:
        return finish_rows(self.ids, self.weights, self.segment_ids, self.spec.seq_len)


def finish_rows(ids: list[np.ndarray], weights: list[np.ndarray], segment_ids: list[np.ndarray],
                seq_len: int) -> dict[str, np.ndarray]:
    """Stacks rows into `[k, seq_len]` arrays; adds positions; zeroes weights per the docstring."""
    if not ids:
        empty = np.zeros((0, seq_len), np.int32)
        return {"ids": empty, "segment_ids": empty, "positions": empty,
                "weights": np.zeros((0, seq_len), np.float32)}
    ids_k, weights_k, segments_k = np.stack(ids), np.stack(weights), np.stack(segment_ids)
    column = np.broadcast_to(np.arange(seq_len, dtype=np.int32), segments_k.shape)
    previous = np.pad(segments_k[:, :-1], ((0, 0), (1, 0)), constant_values=0)
    segment_start = segments_k != previous
    start_column = np.maximum.accumulate(np.where(segment_start, column, 0), axis=1)
    is_token = segments_k > 0
    positions = np.where(is_token, column - start_column, 0).astype(np.int32)
    weights_k = np.where(is_token & ~segment_start, weights_k, 0).astype(np.float32)
    return {"ids": ids_k, "segment_ids": segments_k, "positions": positions, "weights": weights_k}


def _place(state: State, slot: int, ids: np.ndarray, weights: np.ndarray) -> None:
    row_ids, row_weights, row_segments, fill, _, _ = state
    start = int(fill[slot])
    segment = int(row_segments[slot, start - 1]) + 1 if start else 1
    row_ids[slot, start:start + len(ids)] = ids
    row_weights[slot, start:start + len(ids)] = weights
    row_segments[slot, start:start + len(ids)] = segment
    fill[slot] = start + len(ids)


def _open(state: State, slot: int) -> None:
    opened, counters = state[4], state[5]
    opened[slot] = counters[-1]
    counters[-1] += 1


def pack_step(state: State, spec: PackingSpec, ids: np.ndarray, weights: np.ndarray | None,
              is_end: bool = False) -> dict[str, np.ndarray]:
    """Feeds one document (or, with `is_end`, the end of the input) to the packer.

    Updates `state` in place and returns the rows finished by this step as `[k, seq_len]` arrays
    (k may be 0). This one function is the packer; `GreedyPacker` and `pack_dataset` only hold
    its state.
    """
    rows = _Rows(spec, state)
    fill, opened, counters = state[3], state[4], state[5]
    if is_end:
        for slot in sorted(np.flatnonzero(fill > 0), key=lambda s: opened[s]):
            rows.emit(int(slot))
        return rows.finish()

    ids = np.asarray(ids, np.int32).reshape(-1)
    weights = (np.ones(len(ids), np.float32) if weights is None
               else np.asarray(weights, np.float32).reshape(-1))
    if len(weights) != len(ids):
        raise ValueError(f"document has {len(ids)} ids but {len(weights)} weights")
    counters[_COUNTER["documents"]] += 1
    if not len(ids):
        counters[_COUNTER["empty"]] += 1
        return rows.finish()
    seq_len = spec.seq_len
    if len(ids) > seq_len and not spec.allow_split_documents:
        if spec.overlong == "drop":
            counters[_COUNTER["dropped"]] += 1
            return rows.finish()
        counters[_COUNTER["truncated"]] += 1
        ids, weights = ids[:seq_len], weights[:seq_len]

    if not spec.pack:
        if len(ids) > seq_len:
            counters[_COUNTER["split"]] += 1
        for start in range(0, len(ids), seq_len):
            _open(state, 0)
            _place(state, 0, ids[start:start + seq_len], weights[start:start + seq_len])
            rows.emit(0)
        return rows.finish()

    if spec.allow_split_documents:
        if len(ids) > seq_len - fill[0]:
            counters[_COUNTER["split"]] += 1
        start = 0
        while start < len(ids):
            if fill[0] == 0:
                _open(state, 0)
            take = min(seq_len - int(fill[0]), len(ids) - start)
            _place(state, 0, ids[start:start + take], weights[start:start + take])
            start += take
            if fill[0] == seq_len:
                rows.emit(0)
        return rows.finish()

    fits = np.flatnonzero((fill > 0) & (fill + len(ids) <= seq_len))
    if fits.size:
        slot = int(fits[np.argmin(opened[fits])])
    else:
        free = np.flatnonzero(fill == 0)
        if free.size:
            slot = int(free[0])
        else:  # Evict the fullest row; among equally full ones the oldest.
            slot = int(np.lexsort((opened, -fill))[0])
            rows.emit(slot)
        _open(state, slot)
    _place(state, slot, ids, weights)
    if fill[slot] == seq_len:
        rows.emit(slot)
    return rows.finish()


def _split_rows(rows: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    return [{name: rows[name][i] for name in ROW_FEATURES} for i in range(len(rows["ids"]))]


class GreedyPacker:
    """Stateful numpy packer: `add` documents, get the rows they complete; `flush` at the end.

    >>> packer = GreedyPacker(PackingSpec(seq_len=8))
    >>> rows = packer.add(ids) + packer.add(other_ids) + packer.flush()
    """

    def __init__(self, spec: PackingSpec):
        self.spec = spec
        self._state = initial_state(spec)

    def add(self, ids: Any, weights: Any = None) -> list[dict[str, np.ndarray]]:
        """Adds one document (ids, optional per-token loss weights); returns rows it finished."""
        return _split_rows(pack_step(self._state, self.spec, ids, weights))

    def flush(self) -> list[dict[str, np.ndarray]]:
        """Emits every open row (oldest first). The packer can be fed again afterwards."""
        return _split_rows(pack_step(self._state, self.spec, np.zeros(0, np.int32), None,
                                     is_end=True))

    @property
    def stats(self) -> dict[str, int]:
        """Running totals, see `PACKING_COUNTERS`."""
        counters = self._state[5]
        return {name: int(counters[i]) for name, i in _COUNTER.items()}


def pack_documents(documents: Iterable[Any], spec: PackingSpec) -> Iterator[dict[str, np.ndarray]]:
    """Packs id arrays or `(ids, weights)` pairs; yields the rows, then the flushed ones."""
    packer = GreedyPacker(spec)
    for document in documents:
        if isinstance(document, tuple):
            yield from packer.add(*document)
        else:
            yield from packer.add(document)
    yield from packer.flush()


def pack_dataset(ds: Any, seq_len: int, *, pack: bool = True, allow_split_documents: bool = False,
                 overlong: str = "truncate", max_open_rows: int = 8, pad_id: int = 0,
                 report_counters: bool = False) -> Any:
    """tf.data transformation: documents -> packed rows (dicts of `[seq_len]` tensors).

    `ds` yields documents as an int id vector, an `(ids, weights)` pair or a dict with `ids` and
    optionally `weights`. The rows are exactly `pack_documents` on the same documents, in the same
    order (the numpy packer runs inside `Dataset.scan`, its state carried as tensors, and the end of
    the input is marked by one extra element so the open rows are flushed). With `report_counters`
    each row also carries `packing_counters`, int64 `[len(PACKING_COUNTERS)]`, the running totals
    at the time it was emitted (so the last row holds the totals, e.g. how many were truncated).
    """
    import tensorflow as tf  # Lazily: numpy users of this module should not pay for TF's import.

    spec = PackingSpec(seq_len=seq_len, pack=pack, allow_split_documents=allow_split_documents,
                       overlong=overlong, max_open_rows=max_open_rows, pad_id=pad_id)

    def as_document(*element):
        if len(element) == 2:
            ids, weights = element
        elif isinstance(element[0], dict):
            ids = element[0]["ids"]
            weights = element[0].get("weights")
        else:
            ids, weights = element[0], None
        ids = tf.cast(tf.reshape(ids, [-1]), tf.int32)
        weights = (tf.ones_like(ids, tf.float32) if weights is None
                   else tf.cast(tf.reshape(weights, [-1]), tf.float32))
        return ids, weights, tf.constant(False)

    end_marker = tf.data.Dataset.from_tensors(
        (tf.zeros([0], tf.int32), tf.zeros([0], tf.float32), tf.constant(True)))
    stream = ds.map(as_document).concatenate(end_marker)

    def numpy_step(*args):
        state = tuple(np.array(a) for a in args[:6])  # Copies: tf's buffers must not be mutated.
        ids, weights, is_end = args[6:]
        rows = pack_step(state, spec, ids, weights, is_end=bool(is_end))
        counters = np.broadcast_to(state[5][:-1], (len(rows["ids"]), len(PACKING_COUNTERS)))
        return (*state, *(rows[name] for name in ROW_FEATURES), np.array(counters))

    state_types = (tf.int32, tf.float32, tf.int32, tf.int32, tf.int64, tf.int64)
    row_types = (tf.int32, tf.int32, tf.int32, tf.float32, tf.int64)
    initial = tuple(tf.constant(a) for a in initial_state(spec))

    def scan_step(state, document):
        outputs = tf.numpy_function(numpy_step, [*state, *document],
                                    list(state_types + row_types), stateful=False,
                                    name="pack_step")
        new_state = tuple(outputs[:6])
        for new, old in zip(new_state, state):
            new.set_shape(old.shape)
        rows = dict(zip(ROW_FEATURES + ("packing_counters",), outputs[6:]))
        for name, tensor in rows.items():
            tensor.set_shape([None, len(PACKING_COUNTERS) if name == "packing_counters"
                              else seq_len])
        if not report_counters:
            del rows["packing_counters"]
        return new_state, rows

    return stream.scan(initial, scan_step).unbatch()
