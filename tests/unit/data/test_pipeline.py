"""tf.data pretraining pipeline: host sharding, exact resume, packing, weights, layout, retrieval,
and the inspect tool."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from cm3leon_jax import paths
from cm3leon_jax.config import CM3Config, MeshConfig
from cm3leon_jax.data.input import cm3, pipeline
from cm3leon_jax.data.offline import shards
from cm3leon_jax.data.input.cm3 import SpecialIds
from cm3leon_jax.parallel import mesh as mesh_lib
from cm3leon_jax.parallel import sharding as sharding_lib
import locations

SPECIAL = SpecialIds(pad=0, eos=1, break_=2, boi=4, eoi=5, sentinels=tuple(range(6, 22)), mask=3)
QUERY_ID0 = 100          # query i's caption starts with QUERY_ID0 + i: identifies the document
RETRIEVED_IDS = (600, 700)  # retrieved captions draw from here
CAPTION_IDS = (800, 900)    # the rest of every caption
IMAGE_IDS = (1000, 1064)    # image codes
CODES = 16
NUM_DOCS = 36
CM3 = CM3Config(seq_len=96, max_spans=4, max_open_rows=4)


def _image(rng, wrapped):
    codes = rng.integers(*IMAGE_IDS, CODES).tolist()
    return [SPECIAL.boi] + codes + [SPECIAL.eoi] if wrapped else codes


def make_record(i, rng, k=2):
    """Query i (caption + image, images `<boi>`-wrapped as prepare writes them for even i, bare
    codes for odd i) with k retrieved documents."""
    wrapped = i % 2 == 0
    texts = [rng.integers(*RETRIEVED_IDS, rng.integers(2, 5)).tolist() for _ in range(k)]
    images = [_image(rng, wrapped) for _ in range(k)]
    text, text_lengths = shards.ragged(texts)
    image, image_lengths = shards.ragged(images)
    caption = [QUERY_ID0 + i] + rng.integers(*CAPTION_IDS, rng.integers(1, 4)).tolist()
    return {"id": f"doc-{i:03d}", "source": "test", "license": "CC0-1.0", "text": caption,
            "image": _image(rng, wrapped), "retrieved_ids": [f"n{j}" for j in range(k)],
            "retrieved_text": text, "retrieved_text_lengths": text_lengths,
            "retrieved_image": image, "retrieved_image_lengths": image_lengths}


def write_prepared(root, num_docs=NUM_DOCS, num_shards=4, split="train"):
    rng = np.random.default_rng(0)
    infos = shards.write_split(root, split, [make_record(i, rng) for i in range(num_docs)],
                               num_shards)
    return shards.write_manifest(root, {split: infos})


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepared")
    write_prepared(root)
    return root


def batches(root, count, cm3_config=CM3, **kwargs):
    kwargs.setdefault("batch_size", 2)
    kwargs.setdefault("process_index", 0)
    kwargs.setdefault("process_count", 1)
    ds = pipeline.pretrain_dataset(root, "train", SPECIAL, cm3_config, **kwargs)
    out = []
    for batch in ds.as_numpy_iterator():
        out.append(batch)
        if len(out) == count:
            break
    return out


def segments(batch_list):
    """Every packed document (segment) as its id array."""
    out = []
    for batch in batch_list:
        for ids, seg in zip(batch["ids"], batch["segment_ids"]):
            for s in range(1, seg.max() + 1):
                out.append(ids[seg == s])
    return out


def query_numbers(ids):
    return [int(t) - QUERY_ID0 for t in ids if QUERY_ID0 <= t < QUERY_ID0 + NUM_DOCS]


def one_pass_documents(root, process_index, process_count, **kwargs):
    plain = dataclasses.replace(CM3, unmasked_rate=1.0)
    out = batches(root, 10_000, plain, repeat=False, num_batches=40, process_index=process_index,
                  process_count=process_count, **kwargs)
    return [n for seg in segments(out) for n in query_numbers(seg)]


# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("num_shards,shard_by", [(4, "file"), (3, "example")])
def test_two_hosts_read_disjoint_examples_whose_union_is_the_split(tmp_path, num_shards,
                                                                    shard_by):
    root = tmp_path / "prepared"
    write_prepared(root, num_shards=num_shards)
    assert pipeline.host_shard(root, "train", 0, 2).by == shard_by
    hosts = [one_pass_documents(root, index, 2, shuffle=True) for index in (0, 1)]
    for docs in hosts:
        assert len(docs) == len(set(docs))  # each document once per epoch
    assert not set(hosts[0]) & set(hosts[1])
    assert sorted(hosts[0] + hosts[1]) == list(range(NUM_DOCS))
    assert sorted(one_pass_documents(root, 0, 1)) == list(range(NUM_DOCS))


def test_resume_after_n_batches_equals_uninterrupted(prepared):
    """Across an epoch boundary (about 18 rows an epoch, 2 rows a batch), through `Batches` with
    global jax arrays, the JSON state and a fresh iterator."""
    mesh = mesh_lib.make_mesh(MeshConfig(data=2, fsdp=1, tensor=1), jax.devices()[:2])
    sharding = sharding_lib.batch_sharding(mesh, MeshConfig().logical_axis_rules())

    def make():
        return pipeline.pretrain_batches(prepared, "train", SPECIAL, CM3, global_batch_size=2,
                                         sharding=sharding, seed=5, process_index=0,
                                         process_count=1)

    straight = make()
    reference = [jax.device_get(next(straight)) for _ in range(16)]
    interrupted = make()
    for _ in range(11):
        next(interrupted)
    state = json.loads(json.dumps(interrupted.get_state()))
    assert state["batches"] == 11
    resumed = make()
    resumed.set_state(state)
    for want in reference[11:]:
        got = jax.device_get(next(resumed))
        assert set(got) == {"ids", "segment_ids", "positions", "weights"}
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])
    assert reference[0]["ids"].shape == (2, CM3.seq_len)
    assert reference[0]["ids"].dtype == np.int32 and reference[0]["weights"].dtype == np.float32

    other = pipeline.pretrain_batches(prepared, "train", SPECIAL, CM3, global_batch_size=2,
                                      sharding=sharding, seed=6, process_index=0,
                                      process_count=1)
    with pytest.raises(ValueError, match="seed: saved 5, now 6"):
        other.set_state(state)


def test_epochs_are_reshuffled_and_cover_the_split(prepared):
    plain = dataclasses.replace(CM3, unmasked_rate=1.0, pack=False)
    rows = batches(prepared, NUM_DOCS, plain, batch_size=2)  # 2 epochs, one document per row
    order = [query_numbers(seg)[0] for seg in segments(rows)]
    first, second = order[:NUM_DOCS], order[NUM_DOCS:]
    assert sorted(first) == sorted(second) == list(range(NUM_DOCS))
    assert first != second


def test_determinism_for_a_seed(prepared):
    a, b = batches(prepared, 6, seed=3), batches(prepared, 6, seed=3)
    for x, y in zip(a, b):
        for name in x:
            np.testing.assert_array_equal(x[name], y[name])
    c = batches(prepared, 6, seed=4)
    assert any(not np.array_equal(x["ids"], z["ids"]) for x, z in zip(a, c))


def test_documents_are_never_split_and_keep_their_spans(prepared):
    """Retrieved documents make examples longer than seq_len - 2 * max_spans, so the fitting drops
    retrieved documents; every packed document still ends in <eos> and its CM3 spans are whole."""
    tight = dataclasses.replace(CM3, seq_len=64, unmasked_rate=0.0)
    docs = segments(batches(prepared, 12, tight))
    assert len(docs) > 12
    for ids in docs:
        assert ids[-1] == SPECIAL.eos
        assert len(ids) <= tight.seq_len
        restored = cm3.uncm3(ids, SPECIAL)  # raises if a span or sentinel were cut off
        assert not SPECIAL.is_sentinel(restored).any()
        assert len(query_numbers(restored)) == 1  # exactly one query, whole
        # A full example (~69 tokens) exceeds 64 - 2 * 4: the last retrieved document is left
        # out, the first one and the query stay.
        assert (restored == SPECIAL.boi).sum() == 2
        assert ((restored >= RETRIEVED_IDS[0]) & (restored < RETRIEVED_IDS[1])).any()
    masked = [ids for ids in docs if SPECIAL.is_sentinel(ids).any()]
    assert len(masked) == len(docs)  # unmasked_rate=0: every document has spans


def test_loss_weights_zero_on_padding_and_segment_starts(prepared):
    for batch in batches(prepared, 8):
        pad = batch["segment_ids"] == 0
        assert pad.any()
        assert (batch["weights"][pad] == 0).all()
        assert (batch["ids"][pad] == SPECIAL.pad).all()
        assert (batch["positions"][pad] == 0).all()
        starts = batch["positions"] == 0
        assert (batch["weights"][starts] == 0).all()
        assert (batch["weights"][~pad & ~starts] > 0).all()


def test_both_layout_orders_occur(prepared):
    plain = dataclasses.replace(CM3, unmasked_rate=1.0)
    docs = segments(batches(prepared, 40, plain, with_retrieval=False))
    orders = []
    for ids in docs:
        assert ids[-1] == SPECIAL.eos
        orders.append("image" if ids[0] == SPECIAL.boi else "text")
    share = orders.count("image") / len(orders)
    assert 0.25 < share < 0.75, share
    always_text = dataclasses.replace(plain, image_first_probability=0.0)
    docs = segments(batches(prepared, 6, always_text, with_retrieval=False))
    assert all(ids[0] != SPECIAL.boi for ids in docs)


def test_with_retrieval_false_drops_retrieved_documents(prepared):
    plain = dataclasses.replace(CM3, unmasked_rate=1.0, seq_len=160)

    def retrieved(ids):
        return (ids >= RETRIEVED_IDS[0]) & (ids < RETRIEVED_IDS[1])

    with_docs = segments(batches(prepared, 6, plain))
    for ids in with_docs:
        # ret_1 <break> ret_2 <break> query <eos>: retrieved tokens all before the query's.
        assert retrieved(ids).any()
        query_at = np.flatnonzero((ids >= QUERY_ID0) & (ids < QUERY_ID0 + NUM_DOCS))[0]
        assert np.flatnonzero(retrieved(ids)).max() < query_at
        assert (ids == SPECIAL.boi).sum() == 3
    without = segments(batches(prepared, 6, plain, with_retrieval=False))
    for ids in without:
        assert not retrieved(ids).any()
        assert (ids == SPECIAL.boi).sum() == 1 and (ids == SPECIAL.break_).sum() == 1


def test_one_pass_yields_exactly_num_batches_with_padding(prepared):
    out = batches(prepared, 1000, repeat=False, batch_size=4, num_batches=30)
    assert len(out) == 30
    assert all(b["ids"].shape == (4, CM3.seq_len) for b in out)
    assert (out[-1]["weights"] == 0).all() and (out[-1]["segment_ids"] == 0).all()
    full = batches(prepared, 1000, repeat=False, batch_size=4)
    assert 0 < len(full) < 30 and np.array_equal(full[0]["ids"], out[0]["ids"])
    with pytest.raises(ValueError, match="num_batches"):
        pipeline.pretrain_dataset(prepared, "train", SPECIAL, CM3, batch_size=2, repeat=False,
                                  process_index=0, process_count=2)


def test_missing_data_and_fingerprint(tmp_path, prepared):
    with pytest.raises(FileNotFoundError, match="prepare"):
        pipeline.pretrain_dataset(tmp_path / "nothing", "train", SPECIAL, CM3, batch_size=2,
                                  process_index=0, process_count=1)
    with pytest.raises(ValueError, match="was not prepared"):
        pipeline.pretrain_dataset(prepared, "validation", SPECIAL, CM3, batch_size=2,
                                  process_index=0, process_count=1)
    too_short = dataclasses.replace(CM3, seq_len=24, overlong="drop")
    with pytest.raises(ValueError, match="never yield a batch.*overlong='drop'"):
        pipeline.pretrain_dataset(prepared, "train", SPECIAL, too_short, batch_size=2,
                                  process_index=0, process_count=1)
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert pipeline.data_fingerprint(prepared) == manifest["fingerprint"]
    assert len(manifest["fingerprint"]) == 64
    assert paths.Workdir(tmp_path).prepared == tmp_path / "prepared"


@pytest.mark.integration
def test_inspect_prints_decoded_rows_and_saves_images(tmp_path):
    """`python -m cm3leon_jax.data.inspect` on a workdir with a tiny, untrained vocabulary."""
    import os
    import subprocess
    import sys

    import tiny_stack
    from cm3leon_jax.data.sources.shapes import scenes

    vocab = tiny_stack.write_vocab(tmp_path / "vocab")
    rng = np.random.default_rng(0)

    def document():
        scene = scenes.sample_scene(rng)
        return (vocab.encode_text(scenes.caption(scene)),
                vocab.image_ids(rng.integers(0, vocab.codebook_size, vocab.code_shape)))

    records = []
    for i in range(8):
        text, image = document()
        neighbours = [document() for _ in range(2)]
        r_text, r_text_lengths = shards.ragged([t for t, _ in neighbours])
        r_image, r_image_lengths = shards.ragged([im for _, im in neighbours])
        records.append({"id": f"d{i}", "text": text, "image": image, "retrieved_text": r_text,
                        "retrieved_text_lengths": r_text_lengths, "retrieved_image": r_image,
                        "retrieved_image_lengths": r_image_lengths})
    root = paths.Workdir(tmp_path).prepared
    shards.write_manifest(root, {"train": shards.write_split(root, "train", records, 2)},
                          vocab=str(tmp_path / "vocab"))
    repo = str(locations.ROOT)
    env = dict(os.environ, PYTHONPATH=repo, JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-m", "cm3leon_jax.data.inspect", f"--workdir={tmp_path}", "--rows=2",
         "--seq_len=512", "--save_images"], capture_output=True, text=True, env=env, cwd=repo,
        timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "row 0:" in out and "row 1:" in out and "segment 1" in out
    assert "[image 8×8 → " in out and "<break>" in out and "<eos>" in out
    assert " at the " in out  # captions shown as text
    saved = sorted((tmp_path / "inspect").glob("*.png"))
    assert saved and saved[0].stat().st_size > 0
    # Composition: each example is 2 retrieved documents + the query, all of about one size, so
    # about two thirds of an example's tokens are retrieved (packing puts more examples in the
    # same rows without them; the share is per example, not per row).
    from cm3leon_jax.config import CM3Config, SFTConfig
    from cm3leon_jax.data import inspect
    shares = inspect.composition(vocab, root, CM3Config(seq_len=512, unmasked_rate=1.0),
                                 SFTConfig(), batches=2, batch_size=2)
    pretrain = shares["pretrain"]
    assert 0.55 < pretrain["retrieved_documents"] < 0.75, pretrain
    assert shares["pretrain_without_retrieval"]["tokens_per_example"] < \
        pretrain["tokens_per_example"] / 2
    for stream in shares.values():
        parts = stream["padding"] + stream["image_codes"] + stream["text"] + stream["structural"]
        assert abs(parts - 1.0) < 1e-6
