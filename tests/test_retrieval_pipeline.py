"""Tiny end to end: train the bi-encoder (loss falls), build the index, every document's neighbours."""

import importlib.util
import pathlib

import numpy as np
import pytest

from cm3leon_jax import config, results
from cm3leon_jax.retrieval import build_index, encoder, index, neighbours, retriever, train_encoder

EXPERIMENT = pathlib.Path(__file__).resolve().parent.parent / "experiments" / "retrieval_shapes.py"


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
    table = neighbours.NeighbourTable.load(
        pathlib.Path(workdir) / "retrieval_index" / "neighbours_train.npz")
    assert table.neighbours.shape == (96, 2) and table.neighbours.dtype == np.int32
    own_rows = np.asarray([table.bank_document_ids.index(d) for d in table.document_ids])
    assert not (table.neighbours == own_rows[:, None]).any()
    assert ((table.neighbours >= -1) & (table.neighbours < 96)).all()
    assert table.info["query_dropout"] == pytest.approx(0.2)
    stored = results.read_metrics(workdir)["retrieval_neighbours"]
    assert stored["train"]["self_retrieved"] == 0 and stored["test"]["documents"] == 16
    validation = neighbours.NeighbourTable.load(
        neighbours.table_path(config.retrieval_config(cfg), workdir, "validation"))
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
    from cm3leon_jax.data import provenance
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
