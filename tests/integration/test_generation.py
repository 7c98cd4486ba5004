"""Decoding: filters against numpy, the cached Decoder against its full forward, greedy decoding
against the full forward pass, CFG / CD-K against their definitions, modality constraints on many
random samples, seeds, prompts in the trained layouts, reranking, and the command line on a tiny project.

Tiny random models only (d_model 32-64, 2 layers); the whole file runs in about a minute on CPU.
"""

import functools
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from cm3leon_jax.config import ModelConfig, SFTConfig, TextTokenizerConfig, TrainConfig
from cm3leon_jax.data.input import layout, sft_tasks
from cm3leon_jax.generation import constraints, decode, generator, guidance
from cm3leon_jax.generation import prompts, rerank, sampling
from cm3leon_jax.generation.sampling import SamplingConfig
from cm3leon_jax.models.decoder import Decoder, init_params
from cm3leon_jax.models import kv_cache
from cm3leon_jax.models.kv_cache import init_cache
from cm3leon_jax.tokenizers.text import TextTokenizer
from cm3leon_jax.vocab import Vocabulary

import tiny_stack
import locations

REPO = locations.ROOT


def _model(preset="cm3leon", vocab_size=128, **overrides):
    fields = dict(preset=preset, vocab_size=vocab_size, num_layers=2, d_model=32, num_heads=4,
                  num_kv_heads=2 if preset == "chameleon" else 0, max_seq_len=96,
                  tie_embeddings=preset == "cm3leon", qk_norm=preset == "chameleon",
                  zero_init_output_projections=False, init_std=0.08)
    fields.update(overrides)
    return ModelConfig(**fields)


@pytest.fixture(scope="module")
def vocab():
    """A real vocabulary (small text tokenizer) with tiny 2x3 images of 16 codes."""
    text = TextTokenizer.train(iter(tiny_stack.CORPUS), TextTokenizerConfig(vocab_size=320))
    return Vocabulary(text, codebook_size=16, code_shape=(2, 3))


# ------------------------------------------------------------------------------ sampling -----

def _np_top_k(logits, k):
    kth = np.sort(logits, axis=-1)[..., -k][..., None]
    return np.where(logits >= kth, logits, -np.inf)


def _np_top_p(logits, p):
    """The definition: sort descending, keep while the mass before a token is < p, plus ties."""
    out = np.full_like(logits, -np.inf)
    for row, values in enumerate(logits):
        order = np.argsort(-values, kind="stable")
        probs = np.exp(values - values.max())
        probs = probs / probs.sum()
        before = np.cumsum(probs[order]) - probs[order]
        count = int(np.sum(before < p))
        threshold = probs[order][count - 1]
        keep = probs >= threshold
        out[row] = np.where(keep, values, -np.inf)
    return out


@pytest.mark.parametrize("k", [1, 5, 37, 200])
def test_top_k_matches_numpy(k):
    logits = np.random.default_rng(k).normal(size=(6, 200)).astype(np.float32)
    logits[0, :4] = logits[0].max()  # a tie at the top
    np.testing.assert_array_equal(np.asarray(sampling.top_k_filter(jnp.asarray(logits), k)),
                                  _np_top_k(logits, k))


@pytest.mark.parametrize("p", [0.05, 0.3, 0.9, 0.999])
def test_top_p_matches_numpy(p):
    rng = np.random.default_rng(int(p * 1000))
    logits = (rng.normal(size=(8, 300)) * rng.uniform(0.5, 4, size=(8, 1))).astype(np.float32)
    logits[1, 10:20] = logits[1].max()  # ties at the top are kept together
    logits[2, 5:] = -np.inf  # masked tokens stay masked
    got = np.asarray(sampling.top_p_filter(jnp.asarray(logits), p))
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(_np_top_p(logits, p)))
    np.testing.assert_array_equal(got[np.isfinite(got)], logits[np.isfinite(got)])


def test_process_order_and_sampler_frequencies():
    logits = jnp.log(jnp.asarray([[0.5, 0.25, 0.15, 0.1]], jnp.float32))
    config = SamplingConfig(temperature=1.0, top_k=3, top_p=0.7)
    kept = np.isfinite(np.asarray(sampling.process(logits, config)))
    assert kept.tolist() == [[True, True, False, False]]  # top-3, then mass 0.5 + 0.25 >= 0.7
    keys = jax.random.split(jax.random.key(0), 20000)
    draws = np.asarray(jax.vmap(lambda key: sampling.sample_categorical(key, logits[0]))(keys))
    frequencies = np.bincount(draws, minlength=4) / len(draws)
    np.testing.assert_allclose(frequencies, [0.5, 0.25, 0.15, 0.1], atol=0.015)
    assert int(sampling.choose(jax.random.key(1), logits, SamplingConfig(temperature=0))[0]) == 0


def test_cdk_candidates_and_scores_match_numpy():
    rng = np.random.default_rng(3)
    expert = rng.normal(size=(5, 64)).astype(np.float32) * 2
    amateur = rng.normal(size=(5, 64)).astype(np.float32) * 2
    for k, alpha in [(1, 0.1), (4, 0.5), (10, 1.0)]:
        probs = np.exp(expert - expert.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        kth = np.sort(probs, axis=-1)[:, -k][:, None]
        want = probs >= alpha * kth
        got = np.asarray(guidance.cdk_candidates(jnp.asarray(expert), k, alpha))
        np.testing.assert_array_equal(got, want)
        scores = np.asarray(guidance.contrastive_logits(jnp.asarray(expert),
                                                        jnp.asarray(amateur), k, alpha))

        def log_softmax(x):
            return x - x.max(-1, keepdims=True) - np.log(
                np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True))

        reference = np.where(want, log_softmax(expert) - log_softmax(amateur), -np.inf)
        np.testing.assert_allclose(scores[want], reference[want], rtol=1e-5, atol=1e-5)
        assert np.all(np.isneginf(scores[~want]))


def test_cfg_formula_and_scale_one():
    cond, uncond = jnp.asarray([[1.0, 2.0, -1.0]]), jnp.asarray([[0.5, 3.0, 0.0]])
    np.testing.assert_array_equal(guidance.classifier_free_guidance(cond, uncond, 1.0), cond)
    np.testing.assert_allclose(guidance.classifier_free_guidance(cond, uncond, 3.0),
                               uncond + 3.0 * (cond - uncond))


# ----------------------------------------------------------------- forward and greedy -----

@pytest.mark.parametrize("preset,scan,swin", [("cm3leon", True, False),
                                              ("chameleon", False, True)])
def test_decoder_with_cache_matches_full_forward_and_unstacked_layers(preset, scan, swin):
    """Prefill with left padding then single tokens: the cached Decoder gives the full forward's
    logits, and `kv_cache.unstack_layers` (what the decode loop runs) gives the same."""
    cfg = _model(preset, scan_layers=scan, swin_norm=swin)
    params = init_params(cfg, jax.random.key(0))
    unstacked, unstacked_cfg = kv_cache.unstack_layers(params, cfg)
    assert not unstacked_cfg.scan_layers and ("layers" in params) == scan
    tokens = jax.random.randint(jax.random.key(1), (3, 9), 1, cfg.vocab_size)
    segments = jnp.asarray([[0, 0, 1, 1, 1, 1, 1, 1, 1], [1] * 9, [0] * 6 + [1] * 3])

    @functools.partial(jax.jit, static_argnames="cfg")
    def cached(params, tokens, segments, *, cfg):
        model, out = Decoder(cfg), []
        logits, cache = model.apply({"params": params}, tokens[:, :7], segments[:, :7],
                                    cache=init_cache(cfg, 3, 12))
        out.append(logits)
        for t in (7, 8):  # then one token at a time
            logits, cache = model.apply({"params": params}, tokens[:, t:t + 1], cache=cache)
            out.append(logits)
        return jnp.concatenate(out, axis=1)

    full = Decoder(cfg).apply({"params": params}, tokens, segments)
    real = np.asarray(segments)[..., None] > 0
    for got in (cached(params, tokens, segments, cfg=cfg),
                cached(unstacked, tokens, segments, cfg=unstacked_cfg)):
        np.testing.assert_allclose(np.asarray(got) * real, np.asarray(full) * real, atol=2e-5)


def test_greedy_decode_equals_argmax_of_full_forward():
    cfg = _model()
    params = init_params(cfg, jax.random.key(2))
    rng = np.random.default_rng(0)
    prompts_ = [rng.integers(1, cfg.vocab_size, size=n).astype(np.int32) for n in (5, 11, 2)]
    out = decode.decode(params, cfg, prompts_, max_new_tokens=20,
                        constraints=constraints.unconstrained(cfg.vocab_size),
                        sampling=SamplingConfig(temperature=0.0), batch_size=2)
    assert out.tokens.shape == (3, 20) and out.lengths.tolist() == [20] * 3
    # One full forward pass over all rows, right-padded (segment 0 on the padding).
    rows = [np.concatenate([p, g]) for p, g in zip(prompts_, out.tokens)]
    width = max(len(r) for r in rows)
    tokens = np.zeros((len(rows), width), np.int32)
    segments = np.zeros((len(rows), width), np.int32)
    for i, row in enumerate(rows):
        tokens[i, :len(row)], segments[i, :len(row)] = row, 1
    all_logits = np.asarray(jax.jit(lambda t, s: Decoder(cfg).apply({"params": params}, t, s))(
        tokens, segments))
    for prompt, generated, log_prob, logits in zip(prompts_, out.tokens, out.log_probs,
                                                    all_logits):
        steps = logits[len(prompt) - 1:len(prompt) + 19]
        np.testing.assert_array_equal(np.argmax(steps, axis=-1), generated)
        expected = np.asarray(jax.nn.log_softmax(steps, axis=-1))
        np.testing.assert_allclose(log_prob, expected[np.arange(20), generated].sum(),
                                   rtol=1e-4)


def test_decode_stops_at_eos_and_pads_after():
    cfg = _model()
    params = init_params(cfg, jax.random.key(2))
    prompt = np.asarray([5, 9, 13], np.int32)
    free = decode.decode(params, cfg, [prompt], max_new_tokens=6,
                         constraints=constraints.unconstrained(cfg.vocab_size),
                         sampling=SamplingConfig(temperature=0.0))
    stop = int(free.tokens[0, 2])  # make the third greedy token a stop token
    out = decode.decode(params, cfg, [prompt], max_new_tokens=6,
                        constraints=constraints.unconstrained(cfg.vocab_size, [stop]),
                        sampling=SamplingConfig(temperature=0.0), pad_id=0)
    first = int(np.argmax(free.tokens[0] == stop))
    assert out.lengths[0] == first + 1
    np.testing.assert_array_equal(out.tokens[0, :first + 1], free.tokens[0, :first + 1])
    assert np.all(out.tokens[0, first + 1:] == 0)


# ------------------------------------------------------------------ constraints, CFG -----

def _image_model(vocab, **overrides):
    return _model(vocab_size=vocab.vocab_size, d_model=32, **overrides)


def _check_stream(vocab, ids, image_count):
    """Every <boi> is followed by exactly h*w codes then <eoi>; no code anywhere else."""
    ids = list(ids)
    position, images = 0, 0
    while position < len(ids):
        token = ids[position]
        if token == vocab.boi_id:
            body = ids[position + 1:position + 1 + image_count]
            if position + 1 + image_count >= len(ids):  # cut by max_new_tokens: codes so far
                assert all(vocab.is_image(np.asarray(body)))
                return images
            assert all(vocab.is_image(np.asarray(body))), ids
            assert ids[position + 1 + image_count] == vocab.eoi_id, ids
            position += image_count + 2
            images += 1
            continue
        assert not vocab.is_image(np.asarray([token]))[0], ids
        assert token not in (vocab.eoi_id, vocab.pad_id, vocab.mask_id), ids
        position += 1
    return images


def test_modality_constraints_never_violated(vocab):
    cfg = _image_model(vocab)
    params = init_params(cfg, jax.random.key(4))
    rng = np.random.default_rng(1)
    rows = [rng.integers(vocab.text_offset, vocab.image_offset, size=rng.integers(2, 9))
            .astype(np.int32) for _ in range(48)]
    count = vocab.code_shape[0] * vocab.code_shape[1]
    hot = SamplingConfig(temperature=2.0)
    # Mixed documents, starting inside an image: the first image is forced, later ones free.
    mixed = decode.decode(params, cfg, [np.append(r, vocab.boi_id) for r in rows],
                          max_new_tokens=40,
                          constraints=constraints.for_vocab(vocab, cfg.vocab_size, "mixed"),
                          sampling=hot, start_in_image=True, seed=1, batch_size=16)
    for row, length in zip(mixed.tokens, mixed.lengths):
        assert _check_stream(vocab, [vocab.boi_id, *row[:length]], count) >= 1
    # Image outputs: exactly one image, h*w codes then <eoi>, then the row stops.
    image = decode.decode(params, cfg, rows, max_new_tokens=count + 6,
                          constraints=constraints.for_vocab(vocab, cfg.vocab_size, "image"),
                          sampling=hot, seed=2, batch_size=16)
    assert image.lengths.tolist() == [count + 2] * len(rows)
    for row in image.tokens:
        assert row[0] == vocab.boi_id and row[count + 1] == vocab.eoi_id
        assert _check_stream(vocab, row[:count + 2], count) == 1
    # Text outputs never contain image codes, <boi> or <eoi>.
    text = decode.decode(params, cfg, rows, max_new_tokens=30,
                         constraints=constraints.for_vocab(vocab, cfg.vocab_size, "text",
                                                           stop_ids=[vocab.break_id]),
                         sampling=hot, seed=3, batch_size=16)
    for row, length in zip(text.tokens, text.lengths):
        generated = row[:length]
        assert np.all(vocab.is_text(generated[:-1]) | (generated[:-1] == vocab.eos_id) |
                      (generated[:-1] == vocab.break_id))
        assert not np.any(vocab.is_image(generated))
        assert vocab.boi_id not in generated and vocab.eoi_id not in generated


def test_cfg_scale_one_equals_conditional_stream(vocab):
    cfg = _image_model(vocab)
    params = init_params(cfg, jax.random.key(5))
    rng = np.random.default_rng(2)
    conds = [np.append(rng.integers(vocab.text_offset, vocab.image_offset, size=6),
                       [vocab.break_id, vocab.boi_id]).astype(np.int32) for _ in range(4)]
    unconds = [np.asarray([vocab.mask_id, vocab.break_id, vocab.boi_id], np.int32)] * 4
    count = vocab.code_shape[0] * vocab.code_shape[1]
    common = dict(max_new_tokens=count + 1, seed=7, start_in_image=True,
                  constraints=constraints.for_vocab(vocab, cfg.vocab_size, "image"))
    alone = decode.decode(params, cfg, conds, sampling=SamplingConfig(temperature=1.0), **common)
    paired = decode.decode(params, cfg, conds, uncond_prompts=unconds,
                           sampling=SamplingConfig(temperature=1.0, cfg_scale=1.0),
                           force_unconditional=True, **common)
    np.testing.assert_array_equal(paired.tokens, alone.tokens)
    guided = decode.decode(params, cfg, conds, uncond_prompts=unconds,
                           sampling=SamplingConfig(temperature=1.0, cfg_scale=3.0), **common)
    assert not np.array_equal(guided.tokens, alone.tokens)


def test_cfg_first_token_matches_full_forward(vocab):
    """Greedy CFG's first code = argmax over image codes of u + 3 (c - u), from full passes."""
    cfg = _image_model(vocab)
    params = init_params(cfg, jax.random.key(6))
    cond = np.asarray([vocab.text_offset + 7, vocab.text_offset + 9, vocab.break_id,
                       vocab.boi_id], np.int32)
    uncond = np.asarray([vocab.mask_id, vocab.break_id, vocab.boi_id], np.int32)
    out = decode.decode(params, cfg, [cond], uncond_prompts=[uncond], max_new_tokens=2,
                        constraints=constraints.for_vocab(vocab, cfg.vocab_size, "image"),
                        sampling=SamplingConfig(temperature=0.0, cfg_scale=3.0),
                        start_in_image=True)
    forward = jax.jit(lambda t: Decoder(cfg).apply({"params": params}, t))
    c = forward(jnp.asarray(cond)[None])[0, -1]
    u = forward(jnp.asarray(uncond)[None])[0, -1]
    guided = np.where(vocab.image_mask(), np.asarray(u + 3.0 * (c - u)), -np.inf)
    assert out.tokens[0, 0] == int(np.argmax(guided))


def test_fixed_seed_reproduces_image_codes(vocab):
    cfg = _image_model(vocab)
    params = init_params(cfg, jax.random.key(7))
    prompt = np.asarray([vocab.text_offset + 3, vocab.break_id, vocab.boi_id], np.int32)
    uncond = np.asarray([vocab.mask_id, vocab.break_id, vocab.boi_id], np.int32)
    settings = dict(uncond_prompts=[uncond], num_samples=3,
                    sampling=SamplingConfig(temperature=1.0, top_p=0.9, cfg_scale=2.0, cd_k=3))
    first, _ = generator.generate_images(params, cfg, vocab, [prompt], seed=11, **settings)
    again, _ = generator.generate_images(params, cfg, vocab, [prompt], seed=11, **settings)
    other, _ = generator.generate_images(params, cfg, vocab, [prompt], seed=12, **settings)
    assert first.shape == (1, 3, *vocab.code_shape)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert first.min() >= 0 and first.max() < vocab.codebook_size


# --------------------------------------------------------------------------- prompts -----

def test_prompts_follow_training_layouts(vocab):
    special = prompts.special_ids(vocab)
    codes = np.arange(6).reshape(vocab.code_shape)
    code_ids = codes.reshape(-1) + vocab.image_offset
    caption_ids = vocab.encode_text("a red circle")
    pre = prompts.PromptBuilder(vocab, "pretrain")
    t2i = pre.text_to_image("a red circle")
    assert t2i.ids.tolist() == caption_ids + [vocab.break_id, vocab.boi_id]
    assert t2i.uncond_ids.tolist() == [vocab.mask_id, vocab.break_id, vocab.boi_id]
    assert pre.caption(codes).ids.tolist() == [vocab.boi_id, *code_ids, vocab.eoi_id,
                                               vocab.break_id]
    with pytest.raises(ValueError, match="instruction-tuned"):
        pre.vqa(codes, "what?")

    sft = prompts.PromptBuilder(vocab, "sft")
    templates = sft_tasks.Templates.from_vocab(SFTConfig(), vocab, special)
    record = sft_tasks.Record(text=np.asarray(caption_ids), image=np.zeros(0, np.int32))
    t2i = sft.text_to_image("a red circle")
    assert t2i.ids.tolist() == templates.prompt("text_to_image", record).tolist() + [vocab.boi_id]
    assert vocab.mask_id in t2i.uncond_ids.tolist() and t2i.uncond_ids[-1] == vocab.boi_id
    assert not set(caption_ids) <= set(t2i.uncond_ids.tolist())  # the caption is masked out
    question = vocab.encode_text("how many objects?")
    vqa = sft.vqa(codes, "how many objects?")
    assert vqa.ids[:len(code_ids) + 2].tolist() == [vocab.boi_id, *code_ids, vocab.eoi_id]
    assert vqa.ids[-1] == vocab.break_id and vqa.ids[-1 - len(question) - 1] != vocab.break_id
    edit = sft.edit(codes, "make the square blue")
    assert edit.ids[-1] == vocab.boi_id and edit.uncond_ids[-1] == vocab.boi_id
    assert len(edit.uncond_ids) < len(edit.ids)

    infill = pre.infill("a <mask> circle at the <mask>")
    s0, s1 = vocab.sentinel_id(0), vocab.sentinel_id(1)
    assert infill.ids.tolist() == (vocab.encode_text("a ") + [s0] + vocab.encode_text(
        " circle at the ") + [s1, s0])
    generated = vocab.encode_text("red") + [s1] + vocab.encode_text("top")
    text, spans = pre.infilled_text(infill, np.asarray(generated))
    assert text == "a red circle at the top" and spans == ["red", "top"]

    documents = [layout.Document(text=np.asarray(caption_ids), image=code_ids),
                 layout.Document(text=np.asarray(question), image=None)]
    prefix = pre.retrieved_prefix(documents, image_first=False)
    assert prefix.tolist() == (caption_ids + [vocab.break_id, vocab.boi_id, *code_ids,
                                              vocab.eoi_id, vocab.break_id] + question
                               + [vocab.break_id])


def test_document_store_reads_prepared_records(tmp_path, vocab):
    from cm3leon_jax.data.offline import shards  # noqa: PLC0415 - TensorFlow only here
    from cm3leon_jax.generation.retrieved_context import DocumentStore, fit_documents  # noqa: PLC0415

    records = [{"id": f"doc{i}", "text": [vocab.text_offset + i], "image":
                [vocab.image_offset + j for j in range(6)]} for i in range(5)]
    infos = shards.write_split(tmp_path, "train", records, num_shards=2)
    shards.write_manifest(tmp_path, {"train": infos})
    store = DocumentStore(tmp_path)
    text, image = store.get("doc3")
    assert text.tolist() == [vocab.text_offset + 3] and len(image) == 6
    assert store.get("missing") is None
    special = prompts.special_ids(vocab)
    documents = [layout.Document(text=text, image=image)] * 3
    # each rendered document: 1 text + <break> + 8 image ids = 10, plus its <break> = 11
    assert len(fit_documents(documents, 22, special, False)) == 2
    assert fit_documents(documents, 10, special, False) == []


def test_rerank_orders_by_clip_score():
    from cm3leon_jax.retrieval import byte_tokenizer, encoder  # noqa: PLC0415

    arch = encoder.ClipArchitecture(
        text_vocab_size=byte_tokenizer.VOCAB_SIZE, text_max_length=16, text_width=32,
        text_layers=1, text_heads=2, text_mlp_dim=64, eos_token_id=byte_tokenizer.EOS_ID,
        image_size=16, patch_size=8, vision_width=32, vision_layers=1, vision_heads=2,
        vision_mlp_dim=64, projection_dim=16)
    biencoder = encoder.BiEncoder(arch, encoder.init_params(arch, jax.random.key(0)), "test")
    images = np.random.default_rng(0).integers(0, 255, (2, 3, 24, 24, 3), dtype=np.uint8)
    order, scores, name = rerank.rank(["a red circle", "a blue square"], images,
                                      np.zeros((2, 3)), biencoder)
    assert name == rerank.CLIP and scores.shape == (2, 3)
    text = biencoder.embed_texts(byte_tokenizer.encode(["a blue square"], 16))
    image = biencoder.embed_images(images[1])
    np.testing.assert_allclose(scores[1], image @ text[0], atol=1e-5)
    assert np.all(np.diff(np.take_along_axis(scores, order, axis=1), axis=1) <= 0)
    order, scores, name = rerank.rank(["x"], images[:1], np.asarray([[-3.0, -1.0, -2.0]]))
    assert name == rerank.LOG_PROB and order.tolist() == [[1, 2, 0]]


# --------------------------------------------------------------------- command line -----

def _write_vocab(directory):
    """tiny_stack.write_vocab's vocabulary, with the random VQ-GAN's variables drawn in numpy
    from their shapes (`jax.eval_shape`): compiling the VQ-GAN's `init` costs ~15 s on CPU."""
    from cm3leon_jax.config import VocabConfig, VQGANConfig  # noqa: PLC0415
    from cm3leon_jax.tokenizers.image_tokenizer import ImageTokenizer  # noqa: PLC0415
    from cm3leon_jax.tokenizers.vqgan import VQGAN  # noqa: PLC0415

    config = VQGANConfig(image_size=32, downsample_factor=4, channels=16,
                         channel_multipliers=(1, 2, 2), norm_groups=8, codebook_size=64,
                         code_dim=8, mid_attention=False)
    shapes = jax.eval_shape(VQGAN(config).init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    rng = np.random.default_rng(0)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if "params" not in name:
            return np.zeros(leaf.shape, leaf.dtype)
        if name.endswith("['scale']"):
            return np.ones(leaf.shape, leaf.dtype)
        if name.endswith("['bias']"):
            return np.zeros(leaf.shape, leaf.dtype)
        fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 1
        return (rng.normal(size=leaf.shape) / np.sqrt(fan_in)).astype(leaf.dtype)

    variables = jax.tree_util.tree_map_with_path(draw, shapes)
    directory.mkdir(parents=True)
    image_path = ImageTokenizer(config, variables, batch_size=8).save(directory / "vqgan")
    text = TextTokenizer.train(iter(tiny_stack.CORPUS), TextTokenizerConfig(vocab_size=320))
    vocab = Vocabulary.build(text, str(image_path), VocabConfig(num_mask_sentinels=16))
    vocab.save(directory)
    return vocab


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A workdir with a vocabulary (random VQ-GAN), a manifest naming it and random checkpoints."""
    from cm3leon_jax.train.checkpoint import Checkpoints  # noqa: PLC0415

    root = tmp_path_factory.mktemp("generate")
    vocab = _write_vocab(root / "vocab")
    (root / "prepared").mkdir()  # the manifest's "vocab" is all generation reads of it
    (root / "prepared" / "manifest.json").write_text(json.dumps({"vocab": str(root / "vocab")}))
    cfg = ml_collections.ConfigDict({"model": dict(
        preset="cm3leon", vocab_size=vocab.vocab_size, num_layers=2, d_model=32, num_heads=2,
        max_seq_len=192, zero_init_output_projections=False)})
    for seed, stage in enumerate(("pretrain", "sft")):
        params = init_params(ModelConfig(**cfg.model.to_dict()), jax.random.key(seed))
        checkpoints = Checkpoints(str(root / stage / "checkpoints"),
                                  TrainConfig(async_checkpoints=False))
        checkpoints.save(5, {"params": params, "step": 5}, {}, {"config": cfg.to_dict()})
        checkpoints.close()
    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    from PIL import Image  # noqa: PLC0415

    Image.fromarray(image).save(root / "x.png")
    return root


def test_generator_tasks_on_a_workdir(project):
    gen = generator.Generator.from_workdir(str(project))
    assert gen.stage == "sft" and gen.step == 5 and gen.retriever is None
    image = np.asarray(__import__("PIL.Image").Image.open(project / "x.png"))[None]
    edited = gen.edit(image, ["make the square blue"], num_samples=2,
                      sampling=SamplingConfig(cfg_scale=3.0))[0]
    assert edited.images.shape == (2, 32, 32, 3) and edited.score_name == rerank.LOG_PROB
    assert np.all(np.diff(edited.scores) <= 0)
    answer = gen.vqa(image, ["how many objects?"], max_new_tokens=8)[0]
    assert len(answer.texts) == 1 and isinstance(answer.texts[0], str)
    filled = gen.infill(["a <mask> circle"], max_new_tokens=5)[0]
    assert filled.texts[0].startswith("a ") and filled.texts[0].endswith(" circle")
    pretrained = generator.Generator.from_workdir(str(project), stage="pretrain")
    assert len(pretrained.caption(image, num_samples=2,
                                  sampling=SamplingConfig(temperature=1.0))[0].texts) == 2

    class Found:  # stands in for a PromptRetriever over a built index
        def documents(self, texts=None, images=None):
            vocab = pretrained.vocab
            document = layout.Document(text=np.asarray(vocab.encode_text("a small red circle")),
                                       image=np.arange(64, dtype=np.int32) + vocab.image_offset)
            return [[document, document]] * len(texts)

    pretrained.retriever = Found()
    augmented = pretrained.text_to_image(["a red circle"])[0]
    plain = pretrained.text_to_image(["a red circle"], retrieval=False)[0]
    gen.retriever = Found()  # the SFT model never saw retrieved documents: off unless asked
    assert gen.text_to_image(["a red circle"])[0].retrieved == 0
    # ~80 ids per document: with the prompt and 65 new tokens only one fits 192 positions, and
    # the less relevant (second) one is dropped, as in training.
    assert augmented.retrieved == 1 and plain.retrieved == 0
    assert augmented.codes.shape == (1, 8, 8)


def test_missing_checkpoint_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="cm3leon_jax.pretrain"):
        generator.Generator.from_workdir(str(tmp_path))


def test_command_line_text_to_image(project, tmp_path):
    out = tmp_path / "grid.png"
    command = [sys.executable, "-m", "cm3leon_jax.generate", "--workdir", str(project),
               "--task", "text2image", "--prompt", "a red circle at the top left",
               "--out", str(out), "--num_samples", "2", "--cfg_scale", "2", "--top_p", "0.9",
               "--seed", "3", "--json"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["stage"] == "sft" and report["out"] == str(out) and out.exists()
    assert len(report["scores"]) == 2 and np.asarray(report["codes"]).shape == (2, 8, 8)
    bad = subprocess.run(command[:5] + ["--task", "vqa", "--stage", "pretrain", "--image",
                                        str(project / "x.png"), "--question", "what?"],
                         cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert bad.returncode == 2 and "cm3leon_jax.sft" in bad.stderr
