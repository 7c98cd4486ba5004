"""Instruction-tuning examples: templates, loss on the answer only, task mixture, packed batches."""

import dataclasses

import numpy as np
import pytest

from cm3leon_jax.config import CM3Config, ConfigError, SFTConfig, TextTokenizerConfig, VocabConfig
from cm3leon_jax.config import from_dict
from cm3leon_jax.data.input import pipeline, sft_tasks
from cm3leon_jax.data.offline import shards
from cm3leon_jax.data.sources.shapes import scenes
from cm3leon_jax.tokenizers.text import TextTokenizer
from cm3leon_jax.vocab import Image, Text, Vocabulary

GRID, CODEBOOK = (4, 4), 64
NUM_DOCS = 40
CM3 = CM3Config(seq_len=192, max_spans=4, max_open_rows=4)


@pytest.fixture(scope="module")
def vocab():
    rng = np.random.default_rng(0)
    corpus = [scenes.caption(scenes.sample_scene(rng), t % 4) for t in range(200)]
    corpus += ["Generate an image: Describe the given picture. Question: Answer: Edit the image "
               "following the instruction: with each object at the position the text gives"] * 20
    text = TextTokenizer.train(iter(corpus), TextTokenizerConfig(vocab_size=320))
    return Vocabulary(text, CODEBOOK, GRID, config=VocabConfig(num_mask_sentinels=16))


def codes(rng):
    return rng.integers(0, CODEBOOK, GRID).astype(np.int32)


def make_record(i, rng, vocab, qa=True, edit=True, text=None):
    scene = scenes.sample_scene(rng)
    record = {"id": f"doc-{i:03d}", "text": vocab.encode_text(text or scenes.caption(scene)),
              "image": vocab.image_ids(codes(rng))}
    if qa:
        pairs = scenes.questions(scene, rng)
        record["qa_question"], record["qa_question_lengths"] = shards.ragged(
            [vocab.encode_text(q) for q, _ in pairs])
        record["qa_answer"], record["qa_answer_lengths"] = shards.ragged(
            [vocab.encode_text(a) for _, a in pairs])
    if edit:
        instruction, _ = scenes.sample_edit(scene, rng)
        record["edit_instruction"] = vocab.encode_text(instruction)
        record["edit_image"] = vocab.image_ids(codes(rng))
    return record


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, vocab):
    root = tmp_path_factory.mktemp("prepared")
    rng = np.random.default_rng(1)
    infos = shards.write_split(root, "train", [make_record(i, rng, vocab) for i in range(NUM_DOCS)],
                               4)
    shards.write_manifest(root, {"train": infos})
    return root


def templates(vocab, **overrides):
    return sft_tasks.Templates.from_vocab(SFTConfig(**overrides), vocab)


def record_of(vocab, caption="a small red circle at the top left", qa=(("what colour is the "
              "circle?", "red"),), instruction="make the circle blue", seed=0):
    rng = np.random.default_rng(seed)
    return sft_tasks.Record(
        text=np.asarray(vocab.encode_text(caption), np.int32),
        image=np.asarray(vocab.image_ids(codes(rng))[1:-1], np.int32),
        questions=[np.asarray(vocab.encode_text(q), np.int32) for q, _ in qa],
        answers=[np.asarray(vocab.encode_text(a), np.int32) for _, a in qa],
        edit_instruction=np.asarray(vocab.encode_text(instruction), np.int32),
        edit_image=np.asarray(vocab.image_ids(codes(rng))[1:-1], np.int32))


def split_weighted(vocab, ids, weights):
    """(prompt items, output items) of one example, split by its loss weights."""
    ids, weights = np.asarray(ids), np.asarray(weights)
    first = int(np.flatnonzero(weights > 0)[0])
    assert (weights[first:] == 1).all() and (weights[:first] == 0).all()
    assert ids[first - 1] == vocab.break_id and ids[-1] == vocab.eos_id
    return vocab.decode_document(ids[:first - 1]), vocab.decode_document(ids[first:])


# --------------------------------------------------------------------------------------------------

def test_each_task_layout_and_loss_on_the_output_only(vocab):
    t, record = templates(vocab), record_of(vocab)
    image = Image(vocab.decode_document([vocab.boi_id, *record.image, vocab.eoi_id])[0].codes)
    edited = Image((record.edit_image - vocab.image_offset).reshape(GRID))
    caption = "a small red circle at the top left"
    expected = {
        "text_to_image": ([Text("Generate an image: " + caption)], [image]),
        "captioning": ([Text("Describe the given picture."), image], [Text(caption)]),
        "vqa": ([image, Text("Question: what colour is the circle? Answer:")], [Text("red.")]),
        "editing": ([Text("Edit the image following the instruction: make the circle blue"),
                     image], [edited]),
        "grounded_generation": (
            [Text("Generate an image with each object at the position the text gives: "
                  + caption)], [image]),
    }
    for task, (prompt, output) in expected.items():
        ids, weights = t.example(task, record)
        assert ids.dtype == np.int32 and weights.dtype == np.float32
        assert split_weighted(vocab, ids, weights) == (prompt, output), task
        # The inference prompt is the example up to and including the <break> before the output.
        prompt_ids = t.prompt(task, record)
        np.testing.assert_array_equal(prompt_ids, ids[:len(prompt_ids)])
        assert weights[len(prompt_ids) - 1] == 0 and weights[len(prompt_ids)] == 1


def test_applicable_tasks_and_draws(vocab):
    t = templates(vocab)
    full = record_of(vocab)
    assert t.applicable(full).all()
    plain = dataclasses.replace(full, questions=[], answers=[],
                                edit_instruction=np.zeros(0, np.int32))
    assert t.applicable(plain).tolist() == [True, True, False, False, True]
    unplaced = dataclasses.replace(plain, text=np.asarray(vocab.encode_text("a red circle"),
                                                          np.int32))
    assert t.applicable(unplaced).tolist() == [True, True, False, False, False]
    weights = sft_tasks.mixture_weights(SFTConfig(), ("vqa",))
    assert t.draw(unplaced, np.random.default_rng(0), weights) is None
    counts = np.zeros(len(sft_tasks.TASKS))
    mixture = sft_tasks.mixture_weights(SFTConfig(text_to_image=3.0, vqa=0.0, editing=0.0,
                                                  grounded_generation=0.0))
    for seed in range(400):
        task, _, _ = t.draw(full, np.random.default_rng(seed), mixture)
        counts[task] += 1
    assert counts[sft_tasks.TASK_IDS["vqa"]] == 0
    assert 0.65 < counts[0] / 400 < 0.85  # 3 : 1 against captioning


def test_config_validates_templates_and_weights():
    with pytest.raises(ConfigError, match="placeholder"):
        from_dict({"text_to_image_template": "Generate an image."}, SFTConfig, "sft")
    with pytest.raises(ConfigError, match="placeholder"):
        from_dict({"vqa_template": "Q: {question} {answer}"}, SFTConfig, "sft")
    with pytest.raises(ConfigError, match="at least one task"):
        from_dict({t: 0.0 for t in sft_tasks.TASKS}, SFTConfig, "sft")
    with pytest.raises(ConfigError, match="regular expression"):
        from_dict({"grounding_pattern": "(top"}, SFTConfig, "sft")
    assert from_dict({"vqa": 2}, SFTConfig, "sft").weights()["vqa"] == 2.0


def sft_batches(prepared, vocab, count, **kwargs):
    kwargs.setdefault("batch_size", 2)
    ds = pipeline.sft_dataset(prepared, "train", vocab, kwargs.pop("cm3_config", CM3),
                              kwargs.pop("sft", SFTConfig()),
                              process_index=0, process_count=1, **kwargs)
    out = []
    for batch in ds.as_numpy_iterator():
        out.append(batch)
        if len(out) == count:
            break
    return out


def test_sft_batches_weights_zero_on_prompt_and_padding_one_on_answer(prepared, vocab):
    seen = set()
    for batch in sft_batches(prepared, vocab, 12, seed=1):
        assert set(batch) == {"ids", "segment_ids", "positions", "weights", "task_ids"}
        pad = batch["segment_ids"] == 0
        assert (batch["weights"][pad] == 0).all() and (batch["task_ids"][pad] == -1).all()
        assert (batch["ids"][pad] == vocab.pad_id).all()
        for row in range(len(batch["ids"])):
            for s in range(1, batch["segment_ids"][row].max() + 1):
                where = batch["segment_ids"][row] == s
                ids, weights = batch["ids"][row][where], batch["weights"][row][where]
                task = set(batch["task_ids"][row][where].tolist())
                assert len(task) == 1
                task = sft_tasks.TASKS[task.pop()]
                seen.add(task)
                prompt, output = split_weighted(vocab, ids, weights)
                if task in ("text_to_image", "grounded_generation", "editing"):
                    assert len(output) == 1 and isinstance(output[0], Image)
                else:
                    assert len(output) == 1 and isinstance(output[0], Text)
                if task == "vqa":
                    assert prompt[-1].text.startswith("Question: ")
                    assert output[0].text.endswith(".")
    assert seen == set(sft_tasks.TASKS)


def test_per_task_stream_resume_and_determinism(prepared, vocab):
    only = sft_batches(prepared, vocab, 1000, repeat=False, tasks=("captioning",), batch_size=4)
    tasks = np.concatenate([b["task_ids"].ravel() for b in only])
    assert set(tasks.tolist()) == {-1, sft_tasks.TASK_IDS["captioning"]}
    documents = sum(int(b["segment_ids"].max(axis=1).sum()) for b in only)
    assert documents == NUM_DOCS  # one pass: every record once

    a = sft_batches(prepared, vocab, 8, seed=2)
    b = sft_batches(prepared, vocab, 8, seed=2)
    resumed = sft_batches(prepared, vocab, 3, seed=2, skip_batches=5)
    for x, y in zip(a, b):
        for name in x:
            np.testing.assert_array_equal(x[name], y[name])
    for x, y in zip(a[5:], resumed):
        for name in x:
            np.testing.assert_array_equal(x[name], y[name])
    c = sft_batches(prepared, vocab, 8, seed=3)
    assert any(not np.array_equal(x["ids"], z["ids"]) for x, z in zip(a, c))


def test_records_without_qa_or_edits_fall_back_to_other_tasks(tmp_path, vocab):
    rng = np.random.default_rng(2)
    root = tmp_path / "prepared"
    records = [make_record(i, rng, vocab, qa=False, edit=False) for i in range(12)]
    shards.write_manifest(root, {"train": shards.write_split(root, "train", records, 2)})
    tasks = np.concatenate([b["task_ids"].ravel() for b in sft_batches(root, vocab, 10)])
    used = {sft_tasks.TASKS[t] for t in set(tasks.tolist()) - {-1}}
    assert used <= {"text_to_image", "captioning", "grounded_generation"} and len(used) >= 2
    with pytest.raises(ValueError, match="never yield a batch.*vqa"):
        sft_batches(root, vocab, 1, tasks=("vqa",))
    # Examples longer than seq_len are left out (never cut: the answer is what has a loss).
    short = dataclasses.replace(CM3, seq_len=72)
    for batch in sft_batches(root, vocab, 4, cm3_config=short):
        for row in range(len(batch["ids"])):
            for s in range(1, batch["segment_ids"][row].max() + 1):
                assert batch["ids"][row][batch["segment_ids"][row] == s][-1] == vocab.eos_id


def test_inspect_brackets_the_prompt(prepared, vocab):
    from cm3leon_jax.data import inspect

    batch = sft_batches(prepared, vocab, 1, seed=4)[0]
    lines = inspect.describe_batch(vocab, batch)
    segments = [line for line in lines if line.startswith("  segment")]
    assert segments and lines[0].startswith("row 0:")
    for line in segments:
        task = line.split("[", 1)[1].split("]", 1)[0]
        assert task in sft_tasks.TASKS
        body = line.split(": ", 1)[1]
        assert body.startswith("{") and body.endswith("<eos>")
        assert "<break>}" in body  # the prompt, closing <break> included, carries no loss
