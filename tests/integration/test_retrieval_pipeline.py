"""Tiny end to end: train the bi-encoder (loss falls), build the index, every document's neighbours."""

import importlib.util
import pathlib

import numpy as np
import pytest

from cm3leon_jax import config, results
from cm3leon_jax.retrieval import (build_index, encoder, index, neighbour_table, neighbours,
                                   retriever, train_encoder)
import locations

EXPERIMENT = locations.ROOT / "experiments" / "retrieval_shapes.py"


def tiny_config():
    spec = importlib.util.spec_from_file_location("retrieval_shapes", EXPERIMENT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config()
    cfg.data.update(num_train=96, num_validation=8, num_test=16)
    cfg.retrieval.update(text_width=32, text_layers=1, text_heads=2, vision_width=32,
                         vision_layers=1, vision_heads=2, patch_size=8, projection_dim=32,
                         batch_size=32, train_steps=30, learning_rate=3e-3, warmup_steps=3,
                         log_every=10, checkpoint_every=30, embed_batch_size=64, num_candidates=8)
    return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("retrieval"))
    cfg = tiny_config()
    figures = train_encoder.train(cfg, workdir)
    return cfg, workdir, figures


def test_training_lowers_the_contrastive_loss_and_reports_recall(trained):
    cfg, workdir, figures = trained
    assert figures["final_loss"] < figures["first_loss"] - 0.2
    stored = results.read_metrics(workdir)["retrieval_encoder"]
    for key in ("text_to_image_recall@1", "text_to_image_recall@5", "image_to_text_recall@1",
                "image_to_text_recall@5"):
        assert 0.0 <= stored[key] <= 1.0
    assert stored["test_documents"] == 16
    reloaded = encoder.load_trained(pathlib.Path(workdir) / "retrieval_encoder")
    assert reloaded.fingerprint == figures["encoder_fingerprint"]


def test_index_and_neighbours_of_every_training_document(trained):
    cfg, workdir, _ = trained
    summary = build_index.build(cfg, workdir)
    assert summary["documents"] == 96 and summary["kind"] == "exact"
    assert summary["self_found_first"] >= 0.95
    neighbours.main(cfg, workdir)
    table = neighbour_table.NeighbourTable.load(
        pathlib.Path(workdir) / "retrieval_index" / "neighbours_train.npz")
    assert table.neighbours.shape == (96, 2) and table.neighbours.dtype == np.int32
    own_rows = np.asarray([table.bank_document_ids.index(d) for d in table.document_ids])
    assert not (table.neighbours == own_rows[:, None]).any()
    assert ((table.neighbours >= -1) & (table.neighbours < 96)).all()
    assert table.info["query_dropout"] == pytest.approx(0.2)
    stored = results.read_metrics(workdir)["retrieval_neighbours"]
    assert stored["train"]["self_retrieved"] == 0 and stored["test"]["documents"] == 16
    validation = neighbour_table.NeighbourTable.load(
        neighbour_table.table_path(config.retrieval_config(cfg), workdir, "validation"))
    assert validation.neighbours.shape == (8, 2) and validation.info["query_dropout"] == 0.0
    assert set(validation.as_dict()) == set(validation.document_ids)

    online = retriever.Retriever.from_config(cfg, workdir)
    rows = online.retrieve(texts=["a small red circle at the top", "a large blue cross"])
    assert rows.shape == (2, 2) and ((rows >= -1) & (rows < 96)).all()
    assert len(online.retrieve_ids(images=np.zeros((1, 32, 32, 3), np.uint8))) == 1
    scores = retriever.text_image_scores(online.biencoder, ["a red square"] * 3,
                                         np.zeros((3, 32, 32, 3), np.uint8))
    assert scores.shape == (3,) and (np.abs(scores) <= 1.0 + 1e-5).all()
    # The index refuses queries embedded by a different encoder.
    with pytest.raises(index.IndexMismatch):
        index.RetrievalIndex.load(pathlib.Path(workdir) / "retrieval_index",
                                  encoder_fingerprint="0" * 64)


def test_the_bank_obeys_the_data_policy_and_removals(trained, tmp_path):
    """build_index leaves out what the licence policy or a recorded removal refuses; generation
    refuses an index that still holds a removed document."""
    import json
    import shutil
    from cm3leon_jax.data.offline import provenance
    cfg, workdir, _ = trained
    copy = str(tmp_path / "w")
    shutil.copytree(workdir, copy)
    bank = index.RetrievalIndex.load(pathlib.Path(copy) / "retrieval_index")
    assert bank.provenance[0]["license"] == "CC0-1.0"
    victim = bank.document_ids[3]
    removed = pathlib.Path(copy) / "prepared" / provenance.REMOVALS_FILE
    removed.parent.mkdir()
    removed.write_text(json.dumps({"ids": [victim], "log": []}))
    with pytest.raises(index.IndexMismatch, match="still holds 1 documents"):
        retriever.Retriever.from_config(cfg, copy)
    summary = build_index.build(cfg, copy)
    assert summary["documents"] == 95
    assert summary["excluded_by_policy"] == {provenance.EXCLUDED_REMOVED: 1}
    online = retriever.Retriever.from_config(cfg, copy)
    assert victim not in online.bank.document_ids
    refusing = cfg.copy_and_resolve_references()
    refusing.data.allowed_licenses = ("CC-BY-4.0",)
    with pytest.raises(ValueError, match="refuses every one of the 96"):
        build_index.build(refusing, copy)


def test_neighbour_lookup_is_a_beam_pipeline_independent_of_workers(trained, tmp_path, capsys):
    """The Beam lookup gives identical tables with 1 and 2 DirectRunner workers (query dropout is
    keyed by document id, every call padded to one shape), skips what the policy refuses (counted
    by reason in the summary), and a document's neighbours do not depend on its batch."""
    import json
    import shutil
    from cm3leon_jax.data.offline import provenance
    from cm3leon_jax.data.sources import catalog
    cfg, workdir, _ = trained
    copy = tmp_path / "w"
    shutil.copytree(workdir, copy)
    cfg = cfg.copy_and_resolve_references()
    # The 30-step encoder scores most candidates above 0.9 (near-duplicates by the default rules):
    # without these thresholds the tables compared below would be nearly empty.
    cfg.retrieval.update(relevance_threshold=1.0, diversity_threshold=1.0)
    retrieval = config.retrieval_config(cfg)
    if not (index.index_dir(retrieval, str(copy)) / index.MANIFEST).exists():
        build_index.build(cfg, str(copy))
    data = config.data_config(cfg)
    validation_ids = sorted(e["id"] for e in catalog.numpy_examples(data, str(copy), "validation"))
    removed = copy / "prepared" / provenance.REMOVALS_FILE
    removed.parent.mkdir(exist_ok=True)
    removed.write_text(json.dumps({"ids": [validation_ids[0]], "log": []}))
    cfg.retrieval.neighbour_splits = ("train", "validation")
    capsys.readouterr()
    neighbours.main(cfg, str(copy))  # DirectRunner, one worker
    out = capsys.readouterr().out
    assert "[neighbours] validation: 7 documents looked up, skipped {'removal request': 1}" in out
    assert "[neighbours] train: 96 documents looked up, skipped none" in out
    stored = results.read_metrics(str(copy))["retrieval_neighbours"]
    assert stored["validation"]["skipped"] == {provenance.EXCLUDED_REMOVED: 1}
    first = neighbour_table.NeighbourTable.load(neighbour_table.table_path(retrieval, str(copy), "train"))
    assert first.document_ids == sorted(first.document_ids) and first.info["query_dropout"] > 0
    assert (first.neighbours >= 0).all()  # k neighbours each: the comparisons below mean something

    # Two workers (threads: processes give the same tables, checked by hand, but start slowly);
    # the split's one file is fewer than the workers, so its documents are spread over both.
    two = neighbours.run_pipeline(data, retrieval, ("--direct_num_workers=2",
                                                    "--direct_running_mode=multi_threading"),
                                  str(copy), ("train",))
    second = neighbour_table.NeighbourTable.load(two["train"])
    assert first.document_ids == second.document_ids
    np.testing.assert_array_equal(first.neighbours, second.neighbours)

    # The same documents in another batch composition (reversed, a batch of 3) get the same rows.
    lookup = neighbours.LookUpNeighbours(retrieval, str(copy), "train", retrieval.query_dropout,
                                         first.info["encoder"]["fingerprint"],
                                         first.info["corpus_fingerprint"])
    lookup.setup()
    documents = {d["id"]: d for d in catalog.numpy_examples(data, str(copy), "train", limit=5)}
    ids = sorted(documents)[::-1][:3]
    for doc_id, row in zip(ids, lookup.neighbours([documents[i] for i in ids])):
        np.testing.assert_array_equal(row, first.neighbours[first.document_ids.index(doc_id)])


def test_query_dropout_is_keyed_by_document_id_not_position():
    from cm3leon_jax.retrieval import byte_tokenizer, rules
    ids = ["shapes/train/7", "shapes/train/8", "shapes/train/9"]
    text = byte_tokenizer.encode(["a large blue square in the centre"] * 3, 48)
    forward = np.asarray(rules.drop_text_tokens(rules.document_id_keys(0, ids), text, 0.2))
    backward = np.asarray(rules.drop_text_tokens(rules.document_id_keys(0, ids[::-1]), text, 0.2))
    np.testing.assert_array_equal(forward, backward[::-1])  # same id, same dropout, any position
    assert len({tuple(row) for row in forward}) == 3
    other_seed = np.asarray(rules.drop_text_tokens(rules.document_id_keys(1, ids), text, 0.2))
    assert not np.array_equal(forward, other_seed)
    assert rules.document_hashes(ids).dtype == np.uint32
    np.testing.assert_array_equal(rules.document_hashes(ids[:1]), rules.document_hashes(ids)[:1])
