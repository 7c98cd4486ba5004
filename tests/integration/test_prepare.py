"""Data preparation on Beam: shards, resume, corrupt shards, workers, removals, card."""


import ml_collections
import numpy as np
import pytest

from cm3leon_jax import paths
from cm3leon_jax.data import prepare
from cm3leon_jax.data.offline import beam as beam_io, provenance, shards
from cm3leon_jax.retrieval import index, neighbour_table

import tiny_stack
import locations


def _cfg(**prepare_fields):
    cfg = ml_collections.ConfigDict()
    cfg.data = ml_collections.ConfigDict(dict(num_train=40, num_validation=8, num_test=8, seed=1))
    cfg.prepare = ml_collections.ConfigDict(dict(num_shards=3, encode_batch_size=8,
                                                 splits=("train", "validation"),
                                                 retrieval="auto"))
    cfg.prepare.update(prepare_fields)
    cfg.retrieval = ml_collections.ConfigDict()
    return cfg


def _records(workdir, split):
    out = {}
    for path in shards.shard_files(paths.Workdir(workdir).prepared, split):
        import tensorflow as tf
        for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
            record = shards.parse_numpy(raw)
            out[record["id"]] = record
    return out


def _shard_bytes(workdir, split):
    directory = shards.split_dir(paths.Workdir(workdir).prepared, split)
    return {p.name: p.read_bytes() for p in sorted(directory.glob("*.tfrecord"))}


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("vocab")
    tiny_stack.write_vocab(directory)
    return directory


def _neighbour_table(workdir, cfg):
    """Each train document retrieves the next two (by id order): a known table to check joins."""
    from cm3leon_jax import config
    from cm3leon_jax.data.sources import catalog
    ids = sorted(e["id"] for e in catalog.numpy_examples(config.data_config(cfg), str(workdir),
                                                         "train"))
    rows = np.array([[(i + 1) % len(ids), (i + 2) % len(ids)] for i in range(len(ids))], np.int32)
    table = neighbour_table.NeighbourTable(ids, rows, ids, {"split": "train"})
    table.save(neighbour_table.table_path(config.retrieval_config(cfg), str(workdir), "train"))
    return {doc: [ids[(i + 1) % len(ids)], ids[(i + 2) % len(ids)]] for i, doc in enumerate(ids)}


def test_prepare_writes_shards_manifest_and_card(tmp_path, vocab_dir):
    cfg = _cfg(vocab_dir=str(vocab_dir))
    wanted = _neighbour_table(tmp_path, cfg)
    figures = prepare.prepare(cfg, str(tmp_path))
    assert figures["kept"] == {"train": 40, "validation": 8}
    records = _records(tmp_path, "train")
    assert len(records) == 40
    from cm3leon_jax.vocab import Vocabulary
    vocab = Vocabulary.load(vocab_dir)
    for doc_id, record in records.items():
        assert record["retrieved_ids"] == wanted[doc_id]
        assert len(record["image"]) == 64 and vocab.is_image(record["image"]).all()
        assert vocab.is_text(record["text"]).all() and len(record["text"]) > 0
        assert list(record["retrieved_image_lengths"]) == [64, 64]
        neighbour = records[wanted[doc_id][0]]
        np.testing.assert_array_equal(record["retrieved_text"][:len(neighbour["text"])],
                                      neighbour["text"])
        assert len(record["qa_question_lengths"]) == len(record["qa_answer_lengths"]) >= 2
        assert len(record["edit_image"]) == 64 and record["license"] == "CC0-1.0"
    assert all(not r["retrieved_ids"] for r in _records(tmp_path, "validation").values())
    card = provenance.read_card(str(tmp_path))
    assert card["splits"]["train"]["by_license"] == {"CC0-1.0": 40}
    assert card["shards_fingerprint"] == shards.read_manifest(
        paths.Workdir(tmp_path).prepared)["fingerprint"]
    assert (tmp_path / "DATA_CARD.md").exists()


def test_rerun_skips_and_corrupt_shard_is_rebuilt(tmp_path, vocab_dir):
    cfg = _cfg(vocab_dir=str(vocab_dir), retrieval="off")
    prepare.prepare(cfg, str(tmp_path))
    before = _shard_bytes(tmp_path, "train")
    again = prepare.prepare(cfg, str(tmp_path))
    assert again["shards_rebuilt"] == 0
    name = sorted(before)[1]
    path = shards.split_dir(paths.Workdir(tmp_path).prepared, "train") / name
    path.write_bytes(path.read_bytes()[:-10])  # truncated: checksum no longer matches
    (shards.split_dir(paths.Workdir(tmp_path).prepared, "train") / sorted(before)[2]).unlink()
    repaired = prepare.prepare(cfg, str(tmp_path))
    assert repaired["shards_rebuilt"] == 2
    assert _shard_bytes(tmp_path, "train") == before


def test_one_and_two_workers_give_identical_shards(tmp_path, vocab_dir):
    one = _cfg(vocab_dir=str(vocab_dir), retrieval="off", splits=("train",))
    two = _cfg(vocab_dir=str(vocab_dir), retrieval="off", splits=("train",),
               beam_options=("--direct_num_workers=2", "--direct_running_mode=multi_threading"))
    first = prepare.prepare(one, str(tmp_path / "one"))
    second = prepare.prepare(two, str(tmp_path / "two"))
    assert first["fingerprint"] == second["fingerprint"]
    assert _shard_bytes(tmp_path / "one", "train") == _shard_bytes(tmp_path / "two", "train")


def _index_of(workdir, cfg, ids):
    """A retrieval index over `ids` (random unit embeddings) where prepare looks for one."""
    from cm3leon_jax import config
    vectors = np.random.default_rng(0).normal(size=(len(ids), 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    bank = index.build(vectors, ids, np.ones(len(ids), bool),
                       index.IndexParameters(kind="exact", num_neighbours=4),
                       encoder_model_id="test", encoder_fingerprint="f" * 64,
                       provenance=[{"source": "shapes", "license": "CC0-1.0"}] * len(ids))
    bank.save(index.index_dir(config.retrieval_config(cfg), str(workdir)))
    return vectors


def test_removal_drops_document_everywhere_and_keeps_other_shards(tmp_path, vocab_dir):
    cfg = _cfg(vocab_dir=str(vocab_dir), splits=("train",))
    wanted = _neighbour_table(tmp_path, cfg)
    vectors = _index_of(tmp_path, cfg, sorted(wanted))
    prepare.prepare(cfg, str(tmp_path))
    before = _shard_bytes(tmp_path, "train")
    victim = sorted(wanted)[5]
    retrievers = {d for d, n in wanted.items() if victim in n}
    remove = tmp_path / "remove.txt"
    remove.write_text(victim + "\n")
    figures = prepare.prepare(cfg, str(tmp_path), remove_file=str(remove))
    after = _shard_bytes(tmp_path, "train")
    records = _records(tmp_path, "train")
    assert victim not in records
    assert all(victim not in r["retrieved_ids"] for r in records.values())
    affected = {shards.shard_name(shards.shard_of(d, 3), 3) for d in retrievers | {victim}}
    for name in before:
        if name not in affected:
            assert after[name] == before[name], name
    assert figures["excluded"] == {provenance.EXCLUDED_REMOVED: 1}
    card = provenance.read_card(str(tmp_path))
    assert card["removals"][0]["count"] == 1 and card["removals"][0]["rebuilt"]
    assert card["removals"][0]["index_rows_removed"] == 1
    from cm3leon_jax import config as config_lib
    assert neighbour_table.table_path(config_lib.retrieval_config(cfg), str(tmp_path),
                                 "train").exists()  # the index rebuild kept the tables
    # The index no longer holds it either: not even a query that is its own embedding finds it.
    from cm3leon_jax import config
    bank = index.RetrievalIndex.load(index.index_dir(config.retrieval_config(cfg), str(tmp_path)))
    assert victim not in bank.document_ids and len(bank) == len(wanted) - 1
    assert bank.manifest["excluded"] == {provenance.EXCLUDED_REMOVED: 1}
    rows, _ = bank.search(vectors[sorted(wanted).index(victim)][None], 4)
    assert victim not in [bank.document_ids[r] for r in rows[0]]


def test_licence_policy_excludes_and_counts(tmp_path, vocab_dir):
    cfg = _cfg(vocab_dir=str(vocab_dir), retrieval="off", splits=("train",))
    cfg.data.allowed_licenses = ("CC-BY-4.0",)
    figures = prepare.prepare(cfg, str(tmp_path))
    assert figures["kept"] == {"train": 0}
    assert figures["excluded"] == {provenance.EXCLUDED_LICENSE: 40}


def test_missing_vocabulary_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no vocabulary"):
        prepare.prepare(_cfg(), str(tmp_path))


def test_audit_passes_then_names_a_corrupt_and_a_missing_shard(tmp_path, vocab_dir):
    from cm3leon_jax.data import audit
    cfg = _cfg(vocab_dir=str(vocab_dir), retrieval="off", splits=("train",))
    prepare.prepare(cfg, str(tmp_path))
    assert audit.problems(str(tmp_path)) == []
    directory = shards.split_dir(paths.Workdir(tmp_path).prepared, "train")
    names = sorted(p.name for p in directory.glob("*.tfrecord"))
    (directory / names[0]).write_bytes(b"corrupted")
    (directory / names[1]).unlink()
    found = audit.problems(str(tmp_path))
    assert any(p.startswith(f"corrupt shard train/{names[0]}") for p in found)
    assert f"missing shard train/{names[1]}" in found
    import subprocess, sys
    result = subprocess.run([sys.executable, "-m", "cm3leon_jax.data.audit", "--workdir",
                             str(tmp_path)], capture_output=True, text=True, timeout=300,
                            cwd=locations.ROOT)
    assert result.returncode == 1 and "PROBLEM: missing shard" in result.stdout
    assert "# Data card" in result.stdout


def test_progress_lines_per_worker_and_worker_count(caplog):
    """Beam commands log done/total, rate and ETA per worker process (its share of the split)."""
    import logging
    options = beam_io.pipeline_options(("--direct_num_workers=2",
                                        "--direct_running_mode=multi_processing"))
    assert beam_io.expected_workers(options) == 2
    assert beam_io.expected_workers(beam_io.pipeline_options(())) == 1
    assert beam_io.expected_workers(beam_io.pipeline_options(("--runner=DataflowRunner",))) == 0
    # No runner named: the local Fn API runner, not Beam's switching default, which would try to
    # download the Prism runner's binary first.
    from apache_beam.options.pipeline_options import StandardOptions
    assert beam_io.pipeline_options(()).view_as(StandardOptions).runner == beam_io.LOCAL_RUNNER
    assert beam_io.pipeline_options(("--runner=DataflowRunner",)).view_as(
        StandardOptions).runner == "DataflowRunner"
    report = beam_io.ReportProgress("prepare: train documents", total=10, workers=2, every_s=1e9)
    report.setup()
    # absl's logger keeps its own level, which an earlier test's entry point may have raised
    # (`generate`/`evaluate` set WARNING), so set both.
    with caplog.at_level(logging.INFO), caplog.at_level(logging.INFO, logger="absl"):
        passed = [out for element in range(6) for out in report.process(element)]
    assert passed == list(range(6))
    lines = [r.getMessage() for r in caplog.records if "prepare: train documents" in r.getMessage()]
    assert len(lines) == 1 and "worker pid" in lines[0]  # logged once, when its share is done
    assert "5/5 (100%)" in lines[0] and "documents/s, ETA 0:00" in lines[0]
