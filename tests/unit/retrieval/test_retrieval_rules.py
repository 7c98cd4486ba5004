"""Retrieval rules on constructed embeddings: self, relevance, modality, diversity, dropout."""

import re

import jax
import numpy as np
import pytest

from cm3leon_jax import config
from cm3leon_jax.retrieval import byte_tokenizer, rules


def unit(*vectors):
    v = np.asarray(vectors, np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def at_angle(score, other_axis=1, dim=4):
    """A unit vector whose cosine with e_0 is `score` (the rest along e_other_axis)."""
    v = np.zeros(dim, np.float32)
    v[0], v[other_axis] = score, np.sqrt(1 - score ** 2)
    return v


def select(query, candidates, multimodal=None, query_row=-1, rows=None, **rule_args):
    candidates = np.asarray(candidates, np.float32)
    m = len(candidates)
    rows = np.arange(m) if rows is None else np.asarray(rows)
    multimodal = np.ones(m, bool) if multimodal is None else np.asarray(multimodal)
    return rules.select_neighbours(np.asarray(query, np.float32)[None], rows[None],
                                   candidates[None], multimodal[None], rules.Rules(**rule_args),
                                   np.asarray([query_row]))[0].tolist()


QUERY = np.array([1, 0, 0, 0], np.float32)


def test_query_itself_is_never_retrieved_even_below_the_relevance_threshold():
    # The query's own row (e.g. embedded with dropout) scores 0.85 < 0.9 but must still be skipped.
    candidates = [at_angle(0.85, 1), at_angle(0.7, 2), at_angle(0.6, 3)]
    assert select(QUERY, candidates, query_row=0, k=2) == [1, 2]


def test_relevance_threshold_skips_near_duplicates_of_the_query():
    candidates = [at_angle(0.99, 1), at_angle(0.91, 2), at_angle(0.9, 3), at_angle(0.5, 1)]
    assert select(QUERY, candidates, k=2, diversity_threshold=1.0) == [2, 3]
    assert select(QUERY, candidates, k=2, relevance_threshold=1.0,
                  diversity_threshold=1.0) == [0, 1]


def test_multimodal_documents_are_preferred():
    candidates = [at_angle(0.8, 1), at_angle(0.7, 2), at_angle(0.3, 3)]
    multimodal = [False, False, True]
    assert select(QUERY, candidates, multimodal, k=2) == [2, 0]
    assert select(QUERY, candidates, multimodal, k=2, prefer_multimodal=False) == [0, 1]


def test_diversity_skips_candidates_too_similar_to_a_chosen_one():
    a = at_angle(0.8, 1)
    a_twin = unit(a + np.array([0, 0, 0.05, 0], np.float32))[0]  # cos(a, a_twin) > 0.99
    b = at_angle(0.6, 2)
    assert float(a @ a_twin) > 0.99 and float(QUERY @ a_twin) < float(QUERY @ a)
    assert select(QUERY, [a, a_twin, b], k=2) == [0, 2]
    assert select(QUERY, [a, a_twin, b], k=2, diversity_threshold=1.0) == [0, 1]


def test_fewer_than_k_eligible_candidates_pad_with_minus_one():
    candidates = [at_angle(0.95, 1), at_angle(0.5, 2), np.zeros(4)]
    rows = [7, 9, -1]  # the last slot is an empty index answer
    assert select(QUERY, candidates, rows=rows, k=3) == [9, -1, -1]


def test_rules_batch_independently_and_follow_the_config():
    retrieval = config.RetrievalConfig(k=1, relevance_threshold=0.75, diversity_threshold=0.5)
    chosen = rules.select_neighbours(
        np.stack([QUERY, QUERY]), np.array([[0, 1], [0, 1]]),
        np.stack([[at_angle(0.8), at_angle(0.7)], [at_angle(0.7), at_angle(0.8)]]),
        np.ones((2, 2), bool), rules.Rules.from_config(retrieval), np.array([-1, 1]))
    assert chosen.tolist() == [[1], [0]]
    assert chosen.dtype == np.int32


def test_text_dropout_drops_a_fifth_of_the_bytes_and_keeps_order():
    text = "a large blue square in the centre"
    ids = byte_tokenizer.encode([text, text], 48)
    keys = rules.document_keys(0, np.array([0, 1]))
    dropped = np.asarray(rules.drop_text_tokens(keys, ids, 0.2))
    n = len(text.encode())
    for row in dropped:
        kept = byte_tokenizer.decode(row)
        assert len(kept) == n - int(n * 0.2)
        assert row[0] == byte_tokenizer.BOS_ID and (row == byte_tokenizer.EOS_ID).sum() == 1
        position = 0  # kept bytes are a subsequence of the original, in order
        for char in kept:
            position = text.index(char, position) + 1
    assert not np.array_equal(dropped[0], dropped[1])  # documents get their own dropout
    again = np.asarray(rules.drop_text_tokens(rules.document_keys(0, np.array([1])), ids[:1], 0.2))
    np.testing.assert_array_equal(again[0], dropped[1])  # depends on (seed, row), not the batch


def test_patch_dropout_keeps_the_rest_of_the_patches():
    keep = np.asarray(rules.patch_keep_masks(rules.document_keys(3, np.arange(5)), 64, 0.2))
    assert keep.shape == (5, 64)
    assert (keep.sum(axis=1) == 64 - 12).all()
    assert len({tuple(row) for row in keep}) == 5


@pytest.mark.parametrize("field,value,message", [
    ("relevance_threshold", 1.5, "relevance_threshold=1.5: must be in"),
    ("diversity_threshold", -0.1, "diversity_threshold=-0.1: must be in"),
    ("k", 0, "retrieval.k=0: must be >= 1"),
    ("query_dropout", 1.0, "query_dropout=1.0: must be in [0, 1)"),
    ("num_candidates", 2, "num_candidates=2: must exceed"),
    ("text_width", 130, "text_width=130: must be divisible"),
    ("activation", "relu", "activation='relu': must be one of"),
])
def test_retrieval_config_rejects_bad_values(field, value, message):
    import ml_collections
    cfg = ml_collections.ConfigDict({"retrieval": {field: value}})
    with pytest.raises(config.ConfigError, match=re.escape(message)):
        config.retrieval_config(cfg)


def test_document_keys_are_keys():
    keys = rules.document_keys(0, np.arange(3))
    assert keys.shape == (3,) and jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key)
