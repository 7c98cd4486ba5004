"""CM3 masking (cm3leon_jax/data/input/cm3.py): seeded random property tests on mixed-modal documents."""

import math

import ml_collections
import numpy as np
import pytest

from cm3leon_jax import config as config_lib
from cm3leon_jax.config import CM3Config
from cm3leon_jax.data.input import cm3, layout
from cm3leon_jax.data.input.cm3 import SpecialIds

SPECIAL = SpecialIds(pad=0, eos=1, break_=2, boi=3, eoi=4, sentinels=tuple(range(10, 26)))
TEXT_IDS = (100, 900)
IMAGE_IDS = (1000, 9192)


def random_document(rng: np.random.Generator, trailing_pad: bool = True) -> np.ndarray:
    """0-2 retrieved documents and a query, each a random interleaving of text runs and images."""

    def segments():
        count = rng.integers(1, 5)
        for _ in range(count):
            if rng.random() < 0.5:
                yield layout.TEXT, rng.integers(*TEXT_IDS, size=rng.integers(0, 12))
            else:
                yield layout.IMAGE, rng.integers(*IMAGE_IDS, size=rng.integers(1, 20))

    documents = [layout.render_segments(list(segments()), SPECIAL)
                 for _ in range(rng.integers(1, 4))]
    ids = layout.join_documents(documents, SPECIAL)
    if rng.random() < 0.2:
        ids = ids[:-1]  # No <eos>: e.g. a prompt.
    if trailing_pad and rng.random() < 0.3:
        ids = np.concatenate([ids, np.zeros(rng.integers(1, 5), np.int32)])
    return ids


CONFIGS = [
    CM3Config(unmasked_rate=0.1),
    CM3Config(unmasked_rate=0.0, poisson_lambda=4.0, max_spans=8),
    CM3Config(unmasked_rate=0.0, poisson_lambda=30.0, max_span_fraction=0.3),
    CM3Config(unmasked_rate=0.5, placeholder_loss_weight=0.0),
]


@pytest.mark.parametrize("config", CONFIGS)
def test_uncm3_inverts_cm3_and_weights_follow_padding(config):
    rng = np.random.default_rng(0)
    for seed in range(300):
        doc = random_document(rng)
        masked, weights = cm3.cm3_mask(doc, SPECIAL, config, cm3.rng_from_seed(seed))
        assert masked.dtype == np.int32 and weights.dtype == np.float32
        np.testing.assert_array_equal(cm3.uncm3(masked, SPECIAL), doc)
        num_spans = len(cm3.spans_of(masked, SPECIAL))
        assert len(masked) == len(doc) + 2 * num_spans
        is_pad = masked == SPECIAL.pad
        assert (weights[is_pad] == 0).all()
        placeholders = np.flatnonzero(SPECIAL.is_sentinel(masked))[:num_spans]
        np.testing.assert_array_equal(weights[placeholders], config.placeholder_loss_weight)
        others = np.ones(len(masked), bool)
        others[placeholders] = False
        np.testing.assert_array_equal(weights[others & ~is_pad], 1.0)
        if doc[doc != SPECIAL.pad][-1:].tolist() == [SPECIAL.eos]:
            # <eos> stays last (before the padding), after every span.
            assert masked[masked != SPECIAL.pad][-1] == SPECIAL.eos


@pytest.mark.parametrize("config", CONFIGS[:3])
def test_spans_stay_inside_one_text_run_or_one_image(config):
    rng = np.random.default_rng(1)
    for seed in range(300):
        doc = random_document(rng)
        starts, ends = cm3.draw_spans(doc, SPECIAL, config, cm3.rng_from_seed(seed))
        assert (ends > starts).all()
        assert (starts[1:] > ends[:-1]).all(), "spans must be separated (else they are one span)"
        for start, end in zip(starts, ends):
            span = doc[start:end]
            # No <break>, <boi>, <eoi>, <eos>, <pad> inside: a span never crosses a boundary either,
            # since crossing one would include it.
            assert not SPECIAL.is_structural(span).any(), (doc, start, end)
            in_text = span < TEXT_IDS[1]
            assert in_text.all() or not in_text.any(), "a span mixes text and image tokens"
        masked, _ = cm3.apply_spans(doc, starts, ends, SPECIAL)
        got = cm3.spans_of(masked, SPECIAL)
        assert [g.tolist() for g in got] == [doc[s:e].tolist() for s, e in zip(starts, ends)]


def reference_apply_spans(doc, starts, ends):
    """Plain-Python statement of the CM3 layout, to check the vectorised `apply_spans` against."""
    doc = [int(t) for t in doc]
    content_end = max([i + 1 for i, t in enumerate(doc) if t != SPECIAL.pad], default=0)
    ends_in_eos = content_end and doc[content_end - 1] == SPECIAL.eos
    body_end = content_end - 1 if ends_in_eos else content_end
    body, tail, position = [], [], 0
    for index, (start, end) in enumerate(zip(starts, ends)):
        body += doc[position:start] + [SPECIAL.sentinels[index]]
        tail += [SPECIAL.sentinels[index]] + doc[start:end]
        position = end
    return body + doc[position:body_end] + tail + doc[body_end:]


def test_apply_spans_matches_plain_python_reference():
    rng = np.random.default_rng(2)
    config = CM3Config(unmasked_rate=0.0, poisson_lambda=3.0)
    for seed in range(200):
        doc = random_document(rng)
        starts, ends = cm3.draw_spans(doc, SPECIAL, config, cm3.rng_from_seed(seed))
        masked, _ = cm3.apply_spans(doc, starts, ends, SPECIAL)
        assert masked.tolist() == reference_apply_spans(doc, starts, ends)


def test_span_count_distribution_and_unmasked_rate():
    config = CM3Config(unmasked_rate=0.25, poisson_lambda=1.0, max_spans=16)
    # A long text run and a large image: room for every draw, so n is the drawn count.
    doc = layout.layout_example(
        layout.Document(text=np.arange(200, 400), image=np.arange(1000, 1256)), [], SPECIAL,
        image_first=False)
    trials = 4000
    counts = np.array([len(cm3.draw_spans(doc, SPECIAL, config, cm3.rng_from_seed(s))[0])
                       for s in range(trials)])
    unmasked = np.mean(counts == 0)
    assert abs(unmasked - 0.25) < 4 * math.sqrt(0.25 * 0.75 / trials)
    masked = counts[counts > 0]
    assert masked.min() >= 1 and masked.max() <= 16
    # clamp(Poisson(1), 1, 16): P(1) = P(0) + P(1) = 2/e, P(2) = 1/(2e), P(3) = 1/(6e).
    expected = {1: 2 / math.e, 2: 1 / (2 * math.e), 3: 1 / (6 * math.e)}
    for value, probability in expected.items():
        observed = np.mean(masked == value)
        assert abs(observed - probability) < 4 * math.sqrt(probability * (1 - probability)
                                                             / len(masked)), (value, observed)

    capped = CM3Config(unmasked_rate=0.0, poisson_lambda=40.0, max_spans=4)
    counts = [len(cm3.draw_spans(doc, SPECIAL, capped, cm3.rng_from_seed(s))[0])
              for s in range(200)]
    assert set(counts) == {4}


def test_single_span_is_uniform_over_placements():
    """One span in a segment of m tokens: each of the (m+1)m/2 (start, end) pairs equally likely."""
    config = CM3Config(unmasked_rate=0.0, poisson_lambda=1e-9, max_spans=1)
    doc = np.array([SPECIAL.boi, 1000, 1001, 1002, 1003, 1004, SPECIAL.eoi, SPECIAL.eos])
    trials = 6000
    seen = {}
    for seed in range(trials):
        starts, ends = cm3.draw_spans(doc, SPECIAL, config, cm3.rng_from_seed(seed))
        key = (int(starts[0]), int(ends[0]))
        seen[key] = seen.get(key, 0) + 1
    assert set(seen) == {(a, b) for a in range(1, 6) for b in range(a + 1, 7)}
    expected = trials / len(seen)
    chi_square = sum((count - expected) ** 2 / expected for count in seen.values())
    assert chi_square < 40.0  # 14 degrees of freedom: P(chi2 > 40) ~ 2e-4.


def test_max_span_fraction_bounds_span_length():
    config = CM3Config(unmasked_rate=0.0, poisson_lambda=3.0, max_span_fraction=0.25)
    rng = np.random.default_rng(3)
    for seed in range(200):
        doc = random_document(rng)
        starts, ends = cm3.draw_spans(doc, SPECIAL, config, cm3.rng_from_seed(seed))
        seg_starts, seg_lengths = cm3.content_segments(doc, SPECIAL)
        for start, end in zip(starts, ends):
            segment = np.searchsorted(seg_starts, start, side="right") - 1
            assert end - start <= max(1, math.floor(0.25 * seg_lengths[segment]))


def test_plain_mask_token_is_structure_when_the_vocabulary_has_one():
    special = SpecialIds(pad=0, eos=1, break_=2, boi=4, eoi=5, mask=3,
                         sentinels=tuple(range(6, 22)))
    doc = np.array([100, 101, 3, 102, 103, 2, 104, 3, 105, 1])
    config = CM3Config(unmasked_rate=0.0, poisson_lambda=3.0)
    for seed in range(200):
        starts, ends = cm3.draw_spans(doc, special, config, cm3.rng_from_seed(seed))
        assert all(3 not in doc[a:b] for a, b in zip(starts, ends))
        masked, _ = cm3.cm3_mask(doc, special, config, cm3.rng_from_seed(seed))
        np.testing.assert_array_equal(cm3.uncm3(masked, special), doc)


def test_documents_without_content_or_room_get_fewer_spans():
    config = CM3Config(unmasked_rate=0.0, poisson_lambda=50.0)
    only_structure = np.array([SPECIAL.break_, SPECIAL.boi, SPECIAL.eoi, SPECIAL.eos, 0])
    masked, weights = cm3.cm3_mask(only_structure, SPECIAL, config, cm3.rng_from_seed(0))
    np.testing.assert_array_equal(masked, only_structure)
    np.testing.assert_array_equal(weights, [1, 1, 1, 1, 0])
    # Two 1-token segments and one 3-token segment: room for 1 + 1 + 2 separated spans.
    doc = np.array([100, 2, 101, 2, 102, 103, 104, 1])
    starts, _ = cm3.draw_spans(doc, SPECIAL, config, cm3.rng_from_seed(0))
    assert len(starts) == 4


def test_uncm3_reads_a_model_infilling_without_eos():
    prefix, suffix, span = [100, 101], [102], [103, 104]
    completion = prefix + [SPECIAL.sentinels[0]] + suffix + [SPECIAL.sentinels[0]] + span
    assert cm3.uncm3(np.array(completion), SPECIAL).tolist() == prefix + span + suffix


def test_errors_name_the_problem():
    config = CM3Config()
    with pytest.raises(ValueError, match="already contains"):
        cm3.cm3_mask(np.array([100, SPECIAL.sentinels[3], 1]), SPECIAL, config,
                     cm3.rng_from_seed(0))
    few = SpecialIds(pad=0, eos=1, break_=2, boi=3, eoi=4, sentinels=(10, 11))
    with pytest.raises(ValueError, match="max_spans=16"):
        cm3.cm3_mask(np.array([100, 1]), few, config, cm3.rng_from_seed(0))
    with pytest.raises(ValueError, match="out of order"):
        cm3.uncm3(np.array([100, 11, 101, 11, 102]), SPECIAL)
    with pytest.raises(ValueError, match="odd number"):
        cm3.uncm3(np.array([100, 10, 101]), SPECIAL)
    with pytest.raises(ValueError, match="special token"):
        cm3.apply_spans(np.array([100, 2, 101, 1]), [0], [3], SPECIAL)
    with pytest.raises(ValueError, match="distinct"):
        SpecialIds(pad=0, eos=1, break_=2, boi=3, eoi=4, sentinels=(4, 5))
    with pytest.raises(ValueError, match="1-D"):
        cm3.cm3_mask(np.zeros((2, 3), np.int32), SPECIAL, config, cm3.rng_from_seed(0))


def test_tf_wrapper_equals_numpy_path_and_is_deterministic():
    import tensorflow as tf

    config = CM3Config(unmasked_rate=0.1, poisson_lambda=2.0)
    rng = np.random.default_rng(4)
    docs = [random_document(rng, trailing_pad=False) for _ in range(40)]
    ds = tf.data.Dataset.from_generator(lambda: iter(docs),
                                        output_signature=tf.TensorSpec([None], tf.int32))
    base_seed = 1234

    def mask(index, ids):
        return cm3.cm3_mask_tf(ids, tf.stack([tf.constant(base_seed, tf.int64), index]), SPECIAL,
                               config)

    masked_ds = ds.enumerate().map(mask, num_parallel_calls=2, deterministic=True)
    first = list(masked_ds.as_numpy_iterator())
    second = list(masked_ds.as_numpy_iterator())
    assert sum(len(cm3.spans_of(ids, SPECIAL)) > 0 for ids, _ in first) > 20
    for index, (doc, (ids, weights), (ids_again, weights_again)) in enumerate(
            zip(docs, first, second)):
        expected_ids, expected_weights = cm3.cm3_mask(
            doc, SPECIAL, config, cm3.rng_from_seed([base_seed, index]))
        np.testing.assert_array_equal(ids, expected_ids)
        np.testing.assert_array_equal(weights, expected_weights)
        np.testing.assert_array_equal(ids_again, ids)
        np.testing.assert_array_equal(weights_again, weights)


def test_batched_tf_wrapper_equals_numpy_path():
    import tensorflow as tf

    config = CM3Config(unmasked_rate=0.1, poisson_lambda=2.0)
    rng = np.random.default_rng(5)
    docs = [random_document(rng, trailing_pad=False) for _ in range(30)]
    ds = tf.data.Dataset.from_generator(lambda: iter(docs),
                                        output_signature=tf.TensorSpec([None], tf.int32))
    masked_ds = ds.enumerate().ragged_batch(8).map(
        lambda index, ids: cm3.cm3_mask_batch_tf(ids, index, SPECIAL, config)).unbatch()
    rows = list(masked_ds.as_numpy_iterator())
    assert len(rows) == len(docs)
    for index, (doc, (ids, weights)) in enumerate(zip(docs, rows)):
        expected_ids, expected_weights = cm3.cm3_mask(doc, SPECIAL, config,
                                                      cm3.rng_from_seed(index))
        np.testing.assert_array_equal(ids, expected_ids)
        np.testing.assert_array_equal(weights, expected_weights)


def test_config_section_validates_with_field_names():
    cfg = ml_collections.ConfigDict({"cm3": {"unmasked_rate": 0.2, "max_spans": 8}})
    section = config_lib.cm3_config(cfg)
    assert section.unmasked_rate == 0.2 and section.max_spans == 8 and section.seq_len == 4096
    for field, value, message in [("overlong", "wrap", "'truncate', 'drop'"),
                                  ("unmasked_rate", 1.5, r"\[0.0, 1.0\]"),
                                  ("max_span_fraction", 0.0, r"\(0, 1\]"),
                                  ("poisson_lambda", 0.0, "positive"),
                                  ("max_open_rows", 0, r"\[1, 1024\]")]:
        bad = ml_collections.ConfigDict({"cm3": {field: value}})
        with pytest.raises(config_lib.ConfigError, match=rf"config\.cm3\.{field}=.*{message}"):
            config_lib.cm3_config(bad)
