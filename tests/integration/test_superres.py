"""Super-resolution stage: pairs, the two-codebook vocabulary, no leak of the target, SSIM, a tiny
end-to-end run (train -> export -> upscale) and the tokenizer-mismatch error."""

import json
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from cm3leon_jax import image_metrics
from cm3leon_jax.superres import stage as superres, upsampler
from cm3leon_jax.config import DataConfig, ModelConfig, TextTokenizerConfig, VocabConfig
from cm3leon_jax.superres import pairs as superres_pairs
from cm3leon_jax.data.sources.shapes import verifier
from cm3leon_jax.models.decoder import Decoder
from cm3leon_jax.tokenizers.text import TextTokenizer
from cm3leon_jax.vocab import Vocabulary
import tiny_stack


DATA = dict(source="shapes", image_size=32, num_train=16, num_validation=8, num_test=8, seed=0)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("superres")
    low = tiny_stack.fast_random_image_tokenizer(root / "low_vqgan", 32)
    high = tiny_stack.fast_random_image_tokenizer(root / "tokenizers_hr" / "image_tokenizer", 64)
    text = TextTokenizer.train(iter(tiny_stack.CORPUS), TextTokenizerConfig(vocab_size=320))
    base = Vocabulary.build(text, str(low), VocabConfig(num_mask_sentinels=16))
    base.save(root / "vocab")
    return root, Vocabulary.load(root / "vocab"), high


def _vocab(stack):
    _, base, _ = stack
    return upsampler.UpsamplerVocab(base, 64, (16, 16))


# ----------------------------------------------------------------------------- pairs -----

def test_pairs_are_the_same_scene_at_two_resolutions(tmp_path):
    pairs = superres_pairs.load_pairs(DataConfig(**DATA), str(tmp_path), "test", 64, limit=6)
    assert pairs["low"].shape == (6, 32, 32, 3) and pairs["high"].shape == (6, 64, 64, 3)
    assert pairs["low"].dtype == np.uint8 and len(pairs["ids"]) == len(set(pairs["ids"])) == 6
    # Same scene: the verifier reads the same objects out of both renderings (and the objects
    # the builder recorded); a 2x2 box-downsampled high-res image is close to the low-res one.
    for low, high, objects in zip(pairs["low"], pairs["high"], pairs["objects"]):
        assert verifier.detect(low).objects == verifier.detect(high).objects == \
            tuple(sorted(map(tuple, objects)))
        box = high.reshape(32, 2, 32, 2, 3).astype(float).mean(axis=(1, 3))
        assert np.mean(np.abs(box - low)) < 12  # differs only along hard edges
    other = superres_pairs.load_pairs(DataConfig(**DATA), str(tmp_path), "test", 64, limit=6)
    assert other["ids"] == pairs["ids"] and np.array_equal(other["high"], pairs["high"])


# ------------------------------------------------------------------------ vocabulary -----

def test_two_code_ranges_and_rows(stack):
    vocab = _vocab(stack)
    base = vocab.base
    assert vocab.low_offset == base.image_offset and vocab.high_offset == base.used_size
    assert vocab.vocab_size % 128 == 0 and vocab.vocab_size >= vocab.used_size
    assert not np.any(vocab.low_mask() & vocab.high_mask())
    assert not np.any(vocab.text_mask() & (vocab.low_mask() | vocab.high_mask()))
    rng = np.random.default_rng(0)
    low, high = rng.integers(0, 64, (8, 8)), rng.integers(0, 64, (16, 16))
    caption = base.encode_text("a small red circle at the top left")
    ids, weights = vocab.row(low, high, caption)
    prompt = vocab.prompt(low, caption)
    assert np.array_equal(ids[:len(prompt)], prompt) and prompt[-1] == vocab.boi_id
    # Caption first, then the low codes (at the base model's ids) repeated up to the high grid,
    # and no high-res code anywhere in the conditioning.
    assert not np.any(vocab.high_mask()[prompt])
    assert np.array_equal(prompt[:len(caption)], caption)
    start = len(caption) + 2  # caption <break> <boi>
    aligned = (prompt[start:start + 256] - base.image_offset).reshape(16, 16)
    assert np.array_equal(aligned, np.kron(low, np.ones((2, 2), int)))
    # The loss is on the 256 high codes and nothing else.
    assert weights.sum() == 256 and np.all(vocab.high_mask()[ids[weights > 0]])
    assert np.array_equal(ids[weights > 0] - vocab.high_offset, high.reshape(-1))
    # High code i sits a fixed distance after the low code under it, with or without a caption.
    for row_ids, row_weights in (vocab.row(low, high, caption), vocab.row(low, high)):
        high_at = np.flatnonzero(row_weights > 0)
        low_at = np.flatnonzero(vocab.low_mask()[row_ids])
        assert np.all(high_at - low_at == 256 + 3)
    assert ids[-2:].tolist() == [vocab.eoi_id, vocab.eos_id]
    assert len(ids) == vocab.max_row_length(len(caption))
    with pytest.raises(ValueError, match="high-res codes must be in"):
        vocab.row(low, high + 64)
    with pytest.raises(upsampler.UpsamplerMismatch, match="times one integer"):
        upsampler.UpsamplerVocab(base, 64, (12, 12))


def test_batches_resume_and_pad(stack):
    vocab = _vocab(stack)
    rng = np.random.default_rng(1)
    low, high = rng.integers(0, 64, (5, 8, 8)), rng.integers(0, 64, (5, 16, 16))
    make = lambda **kw: superres_pairs.PairBatches(vocab, low, high, seq_len=520,  # noqa: E731
                                                   global_batch_size=4, seed=3, **kw)
    stream = make()
    first = [next(stream) for _ in range(3)]
    resumed = make()
    resumed.set_state(json.loads(json.dumps(make().get_state() | {"batches": 2})))
    np.testing.assert_array_equal(next(resumed)["ids"], first[2]["ids"])
    once = list(make(repeat=False))
    assert len(once) == 2 and once[1]["weights"][1:].sum() == 0  # 5 pairs: 1 real row + padding
    with pytest.raises(ValueError, match="differs from the checkpoint"):
        make().set_state({**stream.get_state(), "seed": 4})


# ------------------------------------------------------------------------------ leak -----

def test_target_codes_do_not_leak_into_earlier_logits(stack):
    vocab = _vocab(stack)
    rng = np.random.default_rng(2)
    ids, _ = vocab.row(rng.integers(0, 64, (8, 8)), rng.integers(0, 64, (16, 16)))
    cfg = ModelConfig(preset="cm3leon", vocab_size=vocab.vocab_size, num_layers=2, d_model=32,
                      num_heads=2, max_seq_len=520, zero_init_output_projections=False)
    model = Decoder(cfg)
    params = nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"])
    apply = jax.jit(lambda tokens: model.apply({"params": params}, tokens))
    position = len(vocab.prompt(np.zeros((8, 8), int))) + 40  # the 41st high code
    changed = ids.copy()
    changed[position] = vocab.high_offset + (int(ids[position]) - vocab.high_offset + 1) % 64
    before, after = np.asarray(apply(jnp.asarray(np.stack([ids, changed]))))
    np.testing.assert_array_equal(before[:position], after[:position])
    assert np.abs(before[position:] - after[position:]).max() > 1e-4  # it does flow forward


# ------------------------------------------------------------------------------ SSIM -----

def test_ssim_and_psnr_known_values():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (2, 24, 24, 3), dtype=np.uint8)
    np.testing.assert_allclose(image_metrics.ssim(image, image), 1.0, atol=1e-12)
    assert np.all(np.isinf(image_metrics.psnr(image, image)))
    # Two constant images a, b: every variance and covariance is 0, so SSIM is the closed form
    # (2ab + C1) / (a^2 + b^2 + C1).
    a, b = np.full((1, 16, 16, 3), 100, np.uint8), np.full((1, 16, 16, 3), 120, np.uint8)
    c1 = (0.01 * 255) ** 2
    np.testing.assert_allclose(image_metrics.ssim(a, b), (2 * 100 * 120 + c1) /
                               (100 ** 2 + 120 ** 2 + c1), rtol=1e-9)
    np.testing.assert_allclose(image_metrics.psnr(a, b), 10 * np.log10(255 ** 2 / 400.0))
    noisy = np.clip(image.astype(int) + rng.integers(-40, 40, image.shape), 0, 255).astype(
        np.uint8)
    score = image_metrics.ssim(image, noisy)
    assert np.all(score < 0.99) and np.all(score > 0.5)
    np.testing.assert_allclose(score, image_metrics.ssim(noisy, image), rtol=1e-12)
    assert image_metrics.bicubic(image, 48).shape == (2, 48, 48, 3)


# ------------------------------------------------------------------- end to end run ------

def _config(root, vocab_size):
    import importlib.util  # noqa: PLC0415

    from cm3leon_jax import cli  # noqa: PLC0415

    spec = importlib.util.spec_from_file_location("superres_shapes",
                                                  cli.EXPERIMENTS / "superres_shapes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config()
    cfg.data = ml_collections.ConfigDict(DATA)
    cfg.superres.vocab_dir = str(root / "vocab")
    cfg.superres.use_caption = True
    cfg.superres.eval_images = 4
    cfg.superres.eval_batch_size = 4
    cfg.superres.encode_batch_size = 8
    cfg.superres.grid_images = 2
    cfg.model = ml_collections.ConfigDict(dict(
        preset="cm3leon", vocab_size=vocab_size, num_layers=1, d_model=32, num_heads=2,
        max_seq_len=576, zero_init_output_projections=False))
    cfg.train = ml_collections.ConfigDict(dict(
        steps=2, batch_size=8, lr=1e-3, warmup_steps=1, log_every=1, eval_every=0,
        eval_batches=1, checkpoint_every=2, async_checkpoints=False))
    return cfg


def test_train_export_and_upscale_end_to_end(stack):
    root, base, _ = stack
    cfg = _config(root, _vocab(stack).vocab_size)
    out = superres.run(cfg, str(root))
    assert out["steps"] == 2 and np.isfinite(out["train_loss"])
    figures = json.loads((root / "metrics.json").read_text())["superres"]["test"]
    for name in ("upsampler", "bicubic", "high_vqgan_reconstruction"):
        assert set(figures[name]) == {"psnr_db", "ssim"}
    assert "upsampler_high_res" in figures["verifier_exact_match"]
    assert (root / "superres" / "samples.png").exists()

    up = upsampler.Upsampler.from_workdir(str(root), batch_size=4)
    assert up.step == 2 and up.meta.use_caption
    up.check_base(base)  # the base vocabulary's VQ-GAN is the one it was trained on
    images = np.random.default_rng(0).integers(0, 256, (2, 48, 48, 3), dtype=np.uint8)
    upscaled = up.upsample_images(images, ["a red circle", ""])
    assert upscaled.shape == (2, 64, 64, 3) and upscaled.dtype == np.uint8
    codes = up.upsample_codes(np.zeros((1, 8, 8), np.int32))
    assert codes.shape == (1, 16, 16) and codes.dtype == np.int32
    assert codes.min() >= 0 and codes.max() < 64

    class Base:  # stands in for a generation.Generator of a base model on the same VQ-GAN
        vocab = base

        def text_to_image(self, captions, num_samples, sampling, seed):
            return [types.SimpleNamespace(codes=np.zeros((num_samples, 8, 8), np.int32),
                                          images=np.zeros((num_samples, 32, 32, 3), np.uint8))
                    for _ in captions]

    low, high = upsampler.upscaled_text_to_image(Base(), up, ["a red circle"], num_samples=2,
                                                 out=str(root / "grid.png"))
    assert low.shape == (1, 2, 32, 32, 3) and high.shape == (1, 2, 64, 64, 3)
    assert high.dtype == np.uint8 and (root / "grid.png").exists()


def test_mismatched_base_tokenizer_is_refused(stack, tmp_path):
    root, base, high = stack
    export_dir = tmp_path / "upsampler"
    vocab, meta = upsampler.export(export_dir, base, base.image_tokenizer_path, high,
                                   use_caption=False, max_caption_tokens=8)
    cfg = ModelConfig(preset="cm3leon", vocab_size=vocab.vocab_size, num_layers=1, d_model=32,
                      num_heads=2, max_seq_len=576)
    up = upsampler.Upsampler({}, cfg, vocab, meta, export_dir)
    up.check_base(base)
    other_tok = tiny_stack.fast_random_image_tokenizer(tmp_path / "other_vqgan", 32, seed=1)
    other = Vocabulary(base.text_tokenizer, base.codebook_size, base.code_shape, str(other_tok),
                       base.config)
    with pytest.raises(upsampler.UpsamplerMismatch, match="fingerprint .* not the low-res"):
        up.check_base(other)
    # Resuming a trained run directory with another low-res tokenizer is refused too.
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    upsampler.export(tmp_path / "run" / "upsampler", base, base.image_tokenizer_path, high,
                     use_caption=False, max_caption_tokens=8)
    same_prompts = superres.SuperresConfig(use_caption=False, max_caption_tokens=8)
    with pytest.raises(upsampler.UpsamplerMismatch, match="another low-res tokenizer"):
        superres._check_resume(tmp_path / "run", upsampler.tokenizer_fingerprint(other_tok),
                               meta.high_tokenizer_fingerprint, same_prompts)
    # ... and so is one written in the first row format, with what to do about it.
    meta_file = tmp_path / "run" / "upsampler" / upsampler.META_FILE
    saved = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**saved, "format_version": 1}))
    with pytest.raises(upsampler.UpsamplerMismatch, match="row format 1.*retrain"):
        superres._check_resume(tmp_path / "run", meta.low_tokenizer_fingerprint,
                               meta.high_tokenizer_fingerprint, same_prompts)
    with pytest.raises(upsampler.UpsamplerMismatch, match="row format 1.*retrain"):
        upsampler.load_export(tmp_path / "run" / "upsampler")
    meta_file.write_text(json.dumps(saved))
    # ... and so is one whose prompts would change (captions on now, off in the checkpoint).
    with pytest.raises(upsampler.UpsamplerMismatch, match="use_caption=False, now True"):
        superres._check_resume(tmp_path / "run", meta.low_tokenizer_fingerprint,
                               meta.high_tokenizer_fingerprint,
                               superres.SuperresConfig(use_caption=True, max_caption_tokens=8))
    superres._check_resume(tmp_path / "run", meta.low_tokenizer_fingerprint,
                           meta.high_tokenizer_fingerprint, same_prompts)  # nothing changed


def test_demo_superres_stage_follows_the_demo_data_and_tokenizer():
    """The demo's high-res VQ-GAN is the base architecture at twice the size (so it can start
    from the base weights) and both stage configs read the demo's data, also after overrides."""
    from cm3leon_jax import demo, experiment_files  # noqa: PLC0415
    from cm3leon_jax.cli import EXPERIMENTS  # noqa: PLC0415

    cfg = experiment_files.config(str(EXPERIMENTS / "demo.py"), "demo")
    cfg.data.num_train = 500
    high, up = demo.superres_configs(cfg)
    assert high.data.image_size == high.vqgan.image_size == 2 * cfg.data.image_size
    assert {k: v for k, v in high.vqgan.items() if k not in ("image_size",
                                                            "discriminator_weight")} == \
        {k: v for k, v in cfg.vqgan.items() if k not in ("image_size", "discriminator_weight")}
    assert high.data.num_train == up.data.num_train == 500
    assert up.data.image_size == cfg.data.image_size
    assert high.vqgan_train.crop_size == cfg.data.image_size
    demo.validate(cfg)
