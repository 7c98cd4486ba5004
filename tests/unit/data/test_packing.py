"""Packing (cm3leon_jax/data/input/packing.py): row invariants, no split when forbidden, tf == numpy."""

import itertools

import numpy as np
import pytest

from cm3leon_jax.config import CM3Config
from cm3leon_jax.data.input import packing
from cm3leon_jax.data.input.packing import PackingSpec

SEQ_LEN = 16
PAD = 0


def random_documents(rng: np.random.Generator, count: int, max_length: int):
    """Documents whose tokens name them: document i holds i * 1000 + 1 + arange(length)."""
    documents = []
    for index in range(count):
        length = int(rng.integers(0, max_length + 1))
        ids = index * 1000 + 1 + np.arange(length, dtype=np.int32)
        weights = rng.choice([0.0, 0.5, 1.0], size=length).astype(np.float32)
        documents.append((ids, weights))
    return documents


SPECS = [PackingSpec(SEQ_LEN, pack=pack, allow_split_documents=split, overlong=overlong,
                     max_open_rows=open_rows)
         for pack, split, overlong, open_rows in itertools.product(
             (True, False), (False, True), ("truncate", "drop"), (1, 3))
         if not (split and (overlong == "drop" or open_rows == 3))]


def check_row(row):
    """Row invariants that hold in every mode; returns [(segment tokens, segment weights)]."""
    ids, segments, positions, weights = (row[n] for n in packing.ROW_FEATURES)
    for array in (ids, segments, positions, weights):
        assert array.shape == (SEQ_LEN,)
    assert ids.dtype == segments.dtype == positions.dtype == np.int32
    assert weights.dtype == np.float32
    padding = segments == 0
    assert (ids[padding] == PAD).all() and (weights[padding] == 0).all()
    assert (positions[padding] == 0).all()
    used = int((~padding).sum())
    assert not padding[:used].any(), "padding only at the end of a row"
    pieces = []
    for segment in range(1, int(segments.max(initial=0)) + 1):
        where = np.flatnonzero(segments == segment)
        assert where.size and (np.diff(where) == 1).all(), "segment ids 1, 2, ... contiguous"
        np.testing.assert_array_equal(positions[where], np.arange(where.size))
        assert weights[where[0]] == 0, "a segment's first token is never a prediction target"
        pieces.append((ids[where], weights[where]))
    return pieces


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_rows_are_well_formed_and_hold_every_document(spec):
    rng = np.random.default_rng(0)
    documents = random_documents(rng, 120, max_length=int(1.5 * SEQ_LEN))
    packer = packing.GreedyPacker(spec)
    rows = []
    for ids, weights in documents:
        rows += packer.add(ids, weights)
    rows += packer.flush()
    pieces_by_document = {}
    for row in rows:
        pieces = check_row(row)
        if not spec.pack:
            assert len(pieces) == 1, "pad mode: one document (piece) per row"
        for piece_ids, piece_weights in pieces:
            pieces_by_document.setdefault(int(piece_ids[0]) // 1000, []).append(
                (piece_ids, piece_weights))

    stats = packer.stats
    assert stats["documents"] == len(documents) and stats["rows"] == len(rows)
    assert stats["tokens"] + stats["padding"] == len(rows) * SEQ_LEN
    long_documents = [i for i, (ids, _) in enumerate(documents) if len(ids) > SEQ_LEN]
    for index, (ids, weights) in enumerate(documents):
        pieces = pieces_by_document.get(index, [])
        if not len(ids) or (index in long_documents and spec.overlong == "drop"
                            and not spec.allow_split_documents):
            assert not pieces
            continue
        if not spec.allow_split_documents:
            assert len(pieces) == 1, f"document {index} split across {len(pieces)} rows"
            ids, weights = ids[:SEQ_LEN], weights[:SEQ_LEN]
        np.testing.assert_array_equal(np.concatenate([p for p, _ in pieces]), ids)
        for piece_ids, piece_weights in pieces:  # The document's weights, first token zeroed.
            start = int(piece_ids[0]) - index * 1000 - 1
            np.testing.assert_array_equal(piece_weights[1:],
                                          weights[start + 1:start + len(piece_ids)])
    if spec.allow_split_documents:
        assert stats["split"] > 0 and stats["truncated"] == stats["dropped"] == 0
    else:
        assert stats["truncated" if spec.overlong == "truncate" else "dropped"] == len(
            long_documents)
    assert stats["empty"] == sum(1 for ids, _ in documents if not len(ids))


def test_split_packing_wastes_nothing_but_the_last_row():
    rng = np.random.default_rng(1)
    documents = random_documents(rng, 100, max_length=40)
    spec = PackingSpec(SEQ_LEN, allow_split_documents=True)
    rows = list(packing.pack_documents(documents, spec))
    assert all((row["segment_ids"] > 0).all() for row in rows[:-1])
    stream = np.concatenate([row["ids"][row["segment_ids"] > 0] for row in rows])
    np.testing.assert_array_equal(stream, np.concatenate([ids for ids, _ in documents]))


def test_first_fit_and_eviction_order():
    """Two open rows of 8: documents go to the oldest row they fit; the fullest row is evicted."""
    spec = PackingSpec(8, max_open_rows=2)
    packer = packing.GreedyPacker(spec)
    doc = lambda name, length: np.full(length, name, np.int32)  # noqa: E731
    assert packer.add(doc(1, 5)) == []             # row A: 1 1 1 1 1
    assert packer.add(doc(2, 6)) == []             # row B: 2 2 2 2 2 2
    assert packer.add(doc(3, 2)) == []             # fits A (oldest): A = 1*5 3*2
    (row,) = packer.add(doc(4, 2))                 # fits only B: B full, leaves
    assert row["ids"].tolist() == [2] * 6 + [4] * 2
    assert packer.add(doc(5, 4)) == []             # fits nothing, B's slot is free: new row C
    (row,) = packer.add(doc(6, 4))                 # fits C, which fills and leaves
    assert row["ids"].tolist() == [5] * 4 + [6] * 4
    assert row["segment_ids"].tolist() == [1] * 4 + [2] * 4
    assert row["positions"].tolist() == [0, 1, 2, 3] * 2
    assert packer.add(doc(7, 7)) == []             # new row D beside A (7 of 8 used)
    (evicted,) = packer.add(doc(8, 3))             # fits neither; both open: fullest (A, D tie at
    assert evicted["ids"].tolist() == [1] * 5 + [3] * 2 + [0]   # 7) leaves, the older one: A.
    rows = packer.flush()
    assert [r["ids"].tolist() for r in rows] == [[7] * 7 + [0], [8] * 3 + [0] * 5]
    assert rows[1]["segment_ids"].tolist() == [1] * 3 + [0] * 5
    assert rows[1]["weights"].tolist() == [0, 1, 1] + [0] * 5


def test_spec_from_config_and_validation():
    spec = PackingSpec.from_config(CM3Config(seq_len=64, pack=False, overlong="drop"), pad_id=7)
    assert (spec.seq_len, spec.pack, spec.overlong, spec.pad_id) == (64, False, "drop", 7)
    (row,) = packing.GreedyPacker(spec).add(np.array([5, 6]))
    assert row["ids"].tolist() == [5, 6] + [7] * 62
    with pytest.raises(ValueError, match="overlong='cut'"):
        PackingSpec(8, overlong="cut")
    with pytest.raises(ValueError, match="seq_len=0"):
        PackingSpec(0)
    with pytest.raises(ValueError, match="3 ids but 2 weights"):
        packing.GreedyPacker(PackingSpec(8)).add(np.array([1, 2, 3]), np.ones(2))


@pytest.mark.parametrize("spec", [PackingSpec(SEQ_LEN, max_open_rows=3),
                                  PackingSpec(SEQ_LEN, allow_split_documents=True),
                                  PackingSpec(SEQ_LEN, pack=False, overlong="drop")], ids=str)
def test_pack_dataset_equals_numpy_packer_and_is_deterministic(spec):
    import tensorflow as tf

    rng = np.random.default_rng(2)
    documents = random_documents(rng, 60, max_length=24)
    expected = list(packing.pack_documents(documents, spec))
    ds = tf.data.Dataset.from_generator(
        lambda: iter(documents), output_signature=(tf.TensorSpec([None], tf.int32),
                                                   tf.TensorSpec([None], tf.float32)))
    packed = packing.pack_dataset(ds, spec.seq_len, pack=spec.pack,
                                  allow_split_documents=spec.allow_split_documents,
                                  overlong=spec.overlong, max_open_rows=spec.max_open_rows,
                                  report_counters=True)
    assert packed.element_spec["ids"].shape == (SEQ_LEN,)
    for _ in range(2):
        rows = list(packed.as_numpy_iterator())
        assert len(rows) == len(expected)
        for row, want in zip(rows, expected):
            for name in packing.ROW_FEATURES:
                np.testing.assert_array_equal(row[name], want[name])
    packer = packing.GreedyPacker(spec)
    for ids, weights in documents:
        packer.add(ids, weights)
    packer.flush()
    totals = dict(zip(packing.PACKING_COUNTERS, rows[-1]["packing_counters"].tolist()))
    assert totals == packer.stats

    # A dict dataset of ids only (weights default to 1) packs too.
    ids_only = tf.data.Dataset.from_generator(
        lambda: ({"ids": ids} for ids, _ in documents),
        output_signature={"ids": tf.TensorSpec([None], tf.int32)})
    rows = list(packing.pack_dataset(ids_only, SEQ_LEN).as_numpy_iterator())
    expected = list(packing.pack_documents([ids for ids, _ in documents], PackingSpec(SEQ_LEN)))
    assert len(rows) == len(expected)
    for row, want in zip(rows, expected):
        np.testing.assert_array_equal(row["weights"], want["weights"])


def test_pack_dataset_iterator_checkpoint_resumes_exactly(tmp_path):
    """The packer's open rows live in the scan state, so a tf.data iterator checkpoint holds them:
    a restored iterator emits exactly the rows the original would have (deterministic resume)."""
    import tensorflow as tf

    rng = np.random.default_rng(3)
    documents = [ids for ids, _ in random_documents(rng, 40, max_length=12)]
    ds = tf.data.Dataset.from_tensor_slices(
        tf.ragged.constant([d.tolist() for d in documents], dtype=tf.int32))
    packed = packing.pack_dataset(ds, SEQ_LEN, max_open_rows=3)
    iterator = iter(packed)
    for _ in range(4):
        next(iterator)
    path = tf.train.Checkpoint(iterator=iterator).save(str(tmp_path / "packer"))
    remaining = [row["ids"].numpy() for row in iterator]
    restored = iter(packed)
    tf.train.Checkpoint(iterator=restored).restore(path)
    resumed = [row["ids"].numpy() for row in restored]
    assert len(remaining) > 3 and len(resumed) == len(remaining)
    for got, want in zip(resumed, remaining):
        np.testing.assert_array_equal(got, want)
