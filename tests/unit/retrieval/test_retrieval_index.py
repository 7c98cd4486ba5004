"""Memory-bank index: exact search, ScaNN recall against it, save/load and mismatch refusal."""

import json
import shutil

import numpy as np
import pytest

from cm3leon_jax import config
from cm3leon_jax.retrieval import index, neighbour_table, rules, synthetic


@pytest.fixture(scope="module")
def clustered():
    rng = np.random.default_rng(0)
    bank, centres = synthetic.clustered_unit_vectors(20_000, 32, 40, 1.0, rng)
    queries, _ = synthetic.clustered_unit_vectors(300, 32, 0, 1.0, rng, centres=centres)
    return bank, queries


def _build(bank, kind="exact", **kwargs):
    ids = [f"doc/{i}" for i in range(len(bank))]
    params = (index.scann_parameters(len(bank), 10, **kwargs) if kind == "scann"
              else index.IndexParameters(kind="exact", num_neighbours=10))
    return index.build(bank, ids, np.arange(len(bank)) % 3 != 0, params,
                       encoder_model_id="test encoder", encoder_fingerprint="f" * 64)


def test_exact_search_matches_numpy(clustered):
    bank, queries = clustered
    rows, scores = index.exact_search(bank[:3000], queries[:50], 5, batch_size=16)
    reference = np.argsort(-(queries[:50] @ bank[:3000].T), axis=1)[:, :5]
    np.testing.assert_array_equal(rows, reference)
    np.testing.assert_allclose(scores, np.take_along_axis(queries[:50] @ bank[:3000].T,
                                                          reference, 1), atol=1e-5)
    small_rows, small_scores = index.exact_search(bank[:3], queries[:2], 5)  # bank < k
    assert (small_rows[:, 3:] == -1).all() and np.isneginf(small_scores[:, 3:]).all()


def test_scann_recall_against_exact_search(clustered):
    bank, queries = clustered
    built = _build(bank, "scann")
    assert built.params.num_leaves == round(np.sqrt(len(bank)))
    found, scores = built.search(queries, 10)
    exact, exact_scores = index.exact_search(bank, queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact)])
    assert recall >= 0.9, recall
    # reordering makes ScaNN's scores exact dot products
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ bank.T, found, 1), atol=1e-4)


def test_parameters_derive_from_corpus_size_and_config_overrides():
    retrieval = config.RetrievalConfig(exact_search_below=1000)
    assert index.parameters_for(retrieval, 999).kind == "exact"
    derived = index.parameters_for(retrieval, 1_000_000)
    assert (derived.kind, derived.num_leaves, derived.leaves_to_search) == ("scann", 1000, 12)
    assert (derived.training_sample_size, derived.ah_training_sample_size) == (100_000, 30_000)
    assert derived.anisotropic_threshold == 0.0
    assert derived.reorder == max(100, 2 * retrieval.num_candidates)
    overridden = index.parameters_for(config.RetrievalConfig(
        exact_search_below=10, index_num_leaves=50, index_leaves_to_search=5, index_reorder=64),
        10_000)
    assert (overridden.num_leaves, overridden.leaves_to_search, overridden.reorder) == (50, 5, 64)


@pytest.mark.parametrize("kind", ["exact", "scann"])
def test_save_load_round_trip_from_a_moved_directory(tmp_path, clustered, kind):
    bank, queries = clustered
    built = _build(bank[:5000], kind, num_leaves=50, leaves_to_search=10)
    before = built.search(queries, 10)
    built.save(tmp_path / "a")
    shutil.move(tmp_path / "a", tmp_path / "b")  # ScaNN assets are stored with relative paths
    loaded = index.RetrievalIndex.load(tmp_path / "b", encoder_fingerprint="f" * 64,
                                       document_ids=built.document_ids)
    after = loaded.search(queries, 10)
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_allclose(before[1], after[1], atol=1e-6)
    assert loaded.document_ids == built.document_ids and loaded.params == built.params
    np.testing.assert_array_equal(loaded.multimodal, built.multimodal)
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["kind"] == kind


def test_load_refuses_other_encoder_other_corpus_and_damaged_files(tmp_path, clustered):
    bank, _ = clustered
    built = _build(bank[:500])
    built.save(tmp_path / "index")
    with pytest.raises(index.IndexMismatch, match="built with encoder 'test encoder'"):
        index.RetrievalIndex.load(tmp_path / "index", encoder_fingerprint="0" * 64)
    with pytest.raises(index.IndexMismatch, match="another corpus"):
        index.RetrievalIndex.load(tmp_path / "index", document_ids=built.document_ids[::-1])
    with pytest.raises(index.IndexMismatch, match="built for corpus"):
        index.RetrievalIndex.load(tmp_path / "index", corpus_fingerprint_expected="0" * 64)
    np.save(tmp_path / "index" / "embeddings.npy", bank[1:501])
    with pytest.raises(index.IndexMismatch, match="damaged"):
        index.RetrievalIndex.load(tmp_path / "index")
    with pytest.raises(FileNotFoundError, match="no retrieval index"):
        index.RetrievalIndex.load(tmp_path / "missing")


def test_neighbours_in_batches_never_return_the_query(tmp_path, clustered):
    bank, _ = clustered
    built = _build(bank[:2000], "scann", num_leaves=40, leaves_to_search=8)
    selection = rules.Rules(k=2, relevance_threshold=0.9, diversity_threshold=0.9)
    rows = neighbour_table.compute_neighbours(built, bank[:2000], selection,
                                         query_rows=np.arange(2000), num_candidates=16,
                                         batch_size=256)
    assert rows.shape == (2000, 2) and rows.dtype == np.int32
    assert not (rows == np.arange(2000)[:, None]).any()
    assert ((rows >= -1) & (rows < 2000)).all()
    chosen = rows[rows[:, 0] >= 0, 0]
    scores = np.einsum("nd,nd->n", bank[:2000][rows[:, 0] >= 0], bank[chosen])
    assert (scores <= 0.9 + 1e-6).all()  # relevance rule held for every query
    table = neighbour_table.NeighbourTable(built.document_ids, rows, built.document_ids, {"k": 2})
    loaded = neighbour_table.NeighbourTable.load(table.save(tmp_path / "n.npz"))
    np.testing.assert_array_equal(loaded.neighbours, rows)
    assert loaded.document_ids == built.document_ids and loaded.info == {"k": 2}
    assert loaded.neighbour_ids(0) == [f"doc/{r}" for r in rows[0] if r >= 0]


@pytest.mark.parametrize("kind", ["exact", "scann"])
def test_filtered_index_never_returns_refused_documents(tmp_path, clustered, kind):
    """Licence policy and removals applied to the bank: refused rows are gone from every search,
    the searcher is rebuilt over the rest, and provenance survives save/load."""
    from cm3leon_jax.data.offline import provenance
    bank, queries = clustered
    bank = bank[:3000]
    ids = [f"doc/{i}" for i in range(len(bank))]
    origins = [{"source": f"site/{i % 7}", "license": "CC-BY-4.0" if i % 5 else "proprietary"}
               for i in range(len(bank))]
    params = (index.scann_parameters(len(bank), 10) if kind == "scann"
              else index.IndexParameters(kind="exact", num_neighbours=10))
    built = index.build(bank, ids, np.ones(len(bank), bool), params, encoder_model_id="e",
                        encoder_fingerprint="f" * 64, provenance=origins)
    policy = provenance.Policy(allowed_licenses=frozenset({"CC-BY-4.0"}),
                               removed=frozenset({"doc/1", "site/3"}))
    kept, excluded = built.filtered(policy.verdict, policy.describe())
    refused = {i for i, o in zip(ids, origins)
               if o["license"] != "CC-BY-4.0" or i == "doc/1" or o["source"] == "site/3"}
    assert sum(excluded.values()) == len(refused) and len(kept) == len(bank) - len(refused)
    assert excluded[provenance.EXCLUDED_REMOVED] > 0 and excluded[provenance.EXCLUDED_LICENSE] > 0
    # Queries aimed exactly at refused documents never get them back.
    targets = np.asarray([ids.index(i) for i in sorted(refused)[:200]])
    rows, _ = kept.search(bank[targets], 10)
    found = {kept.document_ids[r] for r in rows.ravel() if r >= 0}
    assert not found & refused and found
    reloaded = index.RetrievalIndex.load(kept.save(tmp_path / "bank"))
    assert reloaded.manifest["excluded"] == dict(excluded)
    assert reloaded.provenance == [o for i, o in zip(ids, origins) if i not in refused]
    assert kept.filtered(policy.verdict, policy.describe())[0] is kept  # nothing left to drop


def test_sharded_scann_recall_matches_one_index_and_survives_save_load(tmp_path, clustered):
    """S trees over contiguous row ranges, searched apart and merged: recall@10 within 0.01 of
    one tree, rows are global, and a saved sharded index loads back to the same answers."""
    bank, queries = clustered
    truth, _ = index.exact_search(bank, queries, 10)

    def recall(found):
        return np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])

    one = _build(bank, "scann")
    sharded = _build(bank, "scann", num_shards=4)
    assert sharded.params.num_shards == 4 and len(sharded._scann.searchers) == 4
    found_one, _ = one.search(queries, 10)
    found, scores = sharded.search(queries, 10)
    assert recall(found) >= recall(found_one) - 0.01 and recall(found) > 0.9
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", queries, bank[found]), atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first after the merge
    reloaded = index.RetrievalIndex.load(sharded.save(tmp_path / "sharded"))
    np.testing.assert_array_equal(reloaded.search(queries, 10)[0], found)


def test_merge_top_k_matches_a_global_sort():
    rng = np.random.default_rng(3)
    scores = [np.sort(rng.normal(size=(5, 4)), axis=1)[:, ::-1] for _ in range(3)]
    rows = [rng.integers(0, 100, size=(5, 4)) + 100 * s for s in range(3)]
    merged_rows, merged_scores = index.merge_top_k(rows, scores, 6)
    every = np.concatenate(scores, axis=1)
    np.testing.assert_allclose(merged_scores, -np.sort(-every, axis=1)[:, :6])
    for q in range(5):
        lookup = dict(zip(np.concatenate(rows, axis=1)[q], every[q]))
        assert [lookup[r] for r in merged_rows[q]] == list(merged_scores[q])
