"""Example layout (cm3leon_jax/data/input/layout.py): order of documents and modalities, tf == numpy."""

import math

import numpy as np
import pytest

from cm3leon_jax.data.input import layout
from cm3leon_jax.data.input.cm3 import SpecialIds
from cm3leon_jax.data.input.layout import Document

SPECIAL = SpecialIds(pad=0, eos=1, break_=2, boi=3, eoi=4, sentinels=tuple(range(10, 26)))
BR, BOI, EOI, EOS = SPECIAL.break_, SPECIAL.boi, SPECIAL.eoi, SPECIAL.eos


def test_retrieved_documents_first_then_query_then_eos():
    retrieved = [Document(text=[101, 102], image=[1001, 1002]), Document(text=[103], image=[1003])]
    query = Document(text=[104, 105], image=[1004])
    caption_first = layout.layout_example(query, retrieved, SPECIAL, image_first=False)
    assert caption_first.tolist() == [
        101, 102, BR, BOI, 1001, 1002, EOI, BR,
        103, BR, BOI, 1003, EOI, BR,
        104, 105, BR, BOI, 1004, EOI, EOS]
    image_first = layout.layout_example(query, retrieved, SPECIAL, image_first=True)
    assert image_first.tolist() == [
        BOI, 1001, 1002, EOI, BR, 101, 102, BR,
        BOI, 1003, EOI, BR, 103, BR,
        BOI, 1004, EOI, BR, 104, 105, EOS]
    assert caption_first.dtype == np.int32


def test_missing_parts_leave_no_doubled_break():
    retrieved = [Document(), Document(text=[101]), Document(image=[1001])]
    query = Document(image=np.array([1002, 1003]))
    ids = layout.layout_example(query, retrieved, SPECIAL, image_first=False)
    assert ids.tolist() == [101, BR, BOI, 1001, EOI, BR, BOI, 1002, 1003, EOI, EOS]
    assert layout.layout_example(Document(text=[7]), [], SPECIAL, False).tolist() == [7, EOS]
    with pytest.raises(ValueError, match="query document is empty"):
        layout.layout_example(Document(), retrieved, SPECIAL, image_first=True)


def test_special_ids_in_content_are_an_offset_bug():
    with pytest.raises(ValueError, match=r"segment 0 \(image\) holds special .* ids \[3\]"):
        layout.render_segments([(layout.IMAGE, [1000, BOI])], SPECIAL)
    with pytest.raises(ValueError, match="segment 0 .text. holds special"):
        layout.layout_example(Document(text=[100, SPECIAL.sentinels[0]]), [], SPECIAL, False)
    with pytest.raises(ValueError, match="modality 'audio'"):
        layout.render_segments([("audio", [100])], SPECIAL)


def test_interleaved_segments_render_in_order():
    segments = [(layout.TEXT, [100]), (layout.IMAGE, [1000, 1001]), (layout.TEXT, []),
                (layout.IMAGE, [1002]), (layout.TEXT, [101, 102])]
    assert layout.render_segments(segments, SPECIAL).tolist() == [
        100, BR, BOI, 1000, 1001, EOI, BR, BOI, 1002, EOI, BR, 101, 102]


def random_documents(rng, count):
    def part(low, high):
        return rng.integers(low, high, size=rng.integers(0, 6)).astype(np.int32)
    return [Document(text=part(100, 900), image=part(1000, 9192)) for _ in range(count)]


def test_random_layouts_parse_back_and_both_orders_occur():
    rng = np.random.default_rng(0)
    probability = 0.3
    trials = 2000
    image_first_count = 0
    for _ in range(trials):
        query = random_documents(rng, 1)[0]
        if not (len(query.text) or len(query.image)):
            query = Document(text=np.array([100]), image=query.image)
        retrieved = random_documents(rng, int(rng.integers(0, 3)))
        image_first = layout.draw_image_first(rng, probability)
        image_first_count += image_first
        ids = layout.layout_example(query, retrieved, SPECIAL, image_first)
        assert ids[-1] == EOS and (ids[:-1] != EOS).all()
        # Split on <break> and check each piece against the documents, in order.
        expected = []
        for document in retrieved + [query]:
            parts = [("text", document.text), ("image", document.image)]
            for kind, tokens in (parts[::-1] if image_first else parts):
                if len(tokens):
                    expected.append([BOI, *tokens, EOI] if kind == "image" else list(tokens))
        pieces = np.split(ids[:-1], np.flatnonzero(ids[:-1] == BR))
        got = [piece[1:].tolist() if i else piece.tolist() for i, piece in enumerate(pieces)]
        assert got == [[int(t) for t in piece] for piece in expected]
    share = image_first_count / trials
    assert abs(share - probability) < 4 * math.sqrt(probability * (1 - probability) / trials)
    assert not any(layout.draw_image_first(rng, 0.0) for _ in range(100))
    assert all(layout.draw_image_first(rng, 1.0) for _ in range(100))


def test_tf_layout_equals_numpy():
    import tensorflow as tf

    def ragged(rows):
        values = np.concatenate([np.zeros(0, np.int32)] + rows).astype(np.int32)
        lengths = np.array([len(row) for row in rows], np.int64)
        return tf.RaggedTensor.from_row_lengths(values, lengths)

    rng = np.random.default_rng(1)
    for num_retrieved in (0, 1, 2, 2, 3):
        query = Document(text=np.array([100, 101], np.int32), image=rng.integers(
            1000, 9192, size=int(rng.integers(0, 4))).astype(np.int32))
        retrieved = random_documents(rng, num_retrieved)
        for image_first in (False, True):
            got = layout.layout_example_tf(
                tf.constant(query.text), tf.constant(query.image),
                ragged([d.text for d in retrieved]), ragged([d.image for d in retrieved]),
                tf.constant(image_first), SPECIAL)
            want = layout.layout_example(query, retrieved, SPECIAL, image_first)
            np.testing.assert_array_equal(got.numpy(), want)
