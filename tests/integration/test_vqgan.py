"""VQ-GAN: quantizer maths, the stable ImageTokenizer API, training steps and checkpoint resume."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from cm3leon_jax import config as config_lib
from cm3leon_jax.config import ConfigError, VQGANConfig, VQGANTrainConfig
from cm3leon_jax.data.sources.shapes import render, scenes
from cm3leon_jax.tokenizers import losses, quantizer, train_vqgan
from cm3leon_jax.tokenizers.discriminator import PatchDiscriminator
from cm3leon_jax.tokenizers.image_tokenizer import ImageTokenizer
from cm3leon_jax.tokenizers.vqgan import VQGAN, init_variables

# A seconds-scale model: 32x32 -> 8x8 codes, 64 codes.
TINY = dict(image_size=32, downsample_factor=4, channels=8, channel_multipliers=(1, 2, 2),
            num_res_blocks=1, norm_groups=4, codebook_size=64, code_dim=8,
            discriminator_channels=8, discriminator_layers=2, restart_unused_after=5)


def tiny_config(**overrides) -> VQGANConfig:
    config = VQGANConfig(**{**TINY, **overrides})
    config.check("vqgan")
    return config


def shapes_images(count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([render.render(scenes.sample_scene(rng), 32) for _ in range(count)])


@pytest.fixture(scope="module")
def tokenizer():
    config = tiny_config()
    return ImageTokenizer(config, init_variables(config), batch_size=4)


# ------------------------------------------------------------------------------ quantizer --

@pytest.mark.parametrize("lookup", ["l2", "cosine"])
def test_gradients_pass_straight_through(lookup):
    """d f(quantized) / d z == (d f / d q) at q = the chosen codes (cosine: at the normalised z)."""
    module = quantizer.VectorQuantizer(codebook_size=16, code_dim=4, lookup=lookup)
    z = jax.random.normal(jax.random.key(1), (2, 3, 3, 4))
    variables = module.init(jax.random.key(2), z)
    weights = jax.random.normal(jax.random.key(3), z.shape)

    def f(q):
        return jnp.sum(jnp.sin(q) * weights)

    def through_quantizer(vectors):
        return f(module.apply(variables, vectors).straight_through)

    quantized = module.apply(variables, z)
    np.testing.assert_allclose(quantized.straight_through,
                               module.apply(variables, method="codebook")[quantized.codes],
                               atol=1e-6)
    grad_q = jax.grad(f)(quantized.straight_through)
    if lookup == "l2":
        np.testing.assert_allclose(jax.grad(through_quantizer)(z), grad_q, atol=1e-6)
    else:  # the straight-through path starts at the normalised vectors
        normalised = quantizer.l2_normalize(z)
        grad_normalised = jax.grad(lambda n: f(
            n + jax.lax.stop_gradient(quantized.straight_through - n)))(normalised)
        np.testing.assert_allclose(grad_normalised, grad_q, atol=1e-6)
        _, pull_back = jax.vjp(quantizer.l2_normalize, z)
        np.testing.assert_allclose(jax.grad(through_quantizer)(z), pull_back(grad_q)[0],
                                   atol=1e-5)


@pytest.mark.parametrize("update", ["loss", "ema"])
def test_restart_revives_dead_codes(update):
    module = quantizer.VectorQuantizer(codebook_size=32, code_dim=4, lookup="l2", update=update)
    # Every vector sits next to one point, so one code takes all and the others die.
    z = 5.0 + 0.01 * jax.random.normal(jax.random.key(4), (64, 4))
    variables = module.init(jax.random.key(5), z)
    params, state = variables.get("params", {}), variables[quantizer.STATE]
    for _ in range(3):
        _, mutated = module.apply({"params": params, quantizer.STATE: state}, z, train=True,
                                  mutable=[quantizer.STATE])
        state = mutated[quantizer.STATE]
    assert int(jnp.sum(state["unused_steps"] >= 3)) == 31
    before = params["codebook"] if update == "loss" else state["codebook"]
    new_params, new_state, restarted = quantizer.restart_dead_codes(
        params, state, update, False, z, jax.random.key(6), after_steps=3)
    after = new_params["codebook"] if update == "loss" else new_state["codebook"]
    dead = np.asarray(state["unused_steps"] >= 3)
    assert int(restarted) == 31
    np.testing.assert_array_equal(after[~dead], before[~dead])
    distances = np.min(np.linalg.norm(np.asarray(after)[dead][:, None] - np.asarray(z)[None],
                                      axis=-1), axis=1)
    assert distances.max() < 1e-6  # every revived code is one of the batch's encoder outputs
    assert int(jnp.max(new_state["unused_steps"])) == 0
    # Revived codes are now near the data and get chosen.
    out = module.apply({"params": new_params, quantizer.STATE: new_state}, z)
    assert len(np.unique(out.codes)) > 1


def test_error_weighted_restarts_pick_badly_served_vectors():
    """restart_sampling='error': revived codes come from vectors far from their code."""
    vectors = jax.random.normal(jax.random.key(10), (64, 4))
    errors = jnp.zeros(64).at[17].set(3.0)  # only row 17 is badly served
    state = {"unused_steps": jnp.full((8,), 9, jnp.int32)}
    params = {"codebook": jnp.zeros((8, 4))}
    new_params, _, restarted = quantizer.restart_dead_codes(
        params, state, "loss", False, vectors, jax.random.key(11, impl="rbg"), 5, errors)
    assert int(restarted) == 8
    np.testing.assert_allclose(new_params["codebook"], jnp.tile(vectors[17], (8, 1)))


def test_ema_codebook_moves_towards_assigned_vectors():
    module = quantizer.VectorQuantizer(codebook_size=4, code_dim=2, lookup="l2", update="ema",
                                       ema_decay=0.5)
    z = jnp.tile(jnp.array([[3.0, -2.0]]), (8, 1))
    variables = module.init(jax.random.key(7), z)
    state = variables[quantizer.STATE]
    for _ in range(30):
        out, mutated = module.apply({quantizer.STATE: state}, z, train=True,
                                    mutable=[quantizer.STATE])
        state = mutated[quantizer.STATE]
    np.testing.assert_allclose(state["codebook"][out.codes[0]], [3.0, -2.0], atol=1e-3)


def test_perplexity():
    assert float(quantizer.perplexity(jnp.array([5.0, 5.0, 5.0, 5.0]))) == pytest.approx(4.0)
    assert float(quantizer.perplexity(jnp.array([9.0, 0.0, 0.0]))) == pytest.approx(1.0)


# ---------------------------------------------------------------------------- tokenizer API --

def test_encode_decode_shapes_and_dtypes(tokenizer):
    images = shapes_images(5)  # not a multiple of the batch: the last batch is padded
    codes = tokenizer.encode(images)
    assert codes.shape == (5, 8, 8) and codes.dtype == np.int32
    assert codes.min() >= 0 and codes.max() < 64
    decoded = tokenizer.decode(codes)
    assert decoded.shape == (5, 32, 32, 3) and decoded.dtype == np.uint8
    np.testing.assert_array_equal(tokenizer.encode(images[:2]), codes[:2])
    assert tokenizer._encode._cache_size() == 1  # one compilation for every input size


@pytest.mark.parametrize("images, message", [
    (np.zeros((2, 32, 32, 3), np.float32), "uint8"),
    (np.zeros((2, 16, 16, 3), np.uint8), "32x32"),
    (np.zeros((2, 32, 32, 4), np.uint8), "3 \\(RGB\\) channels"),
    (np.zeros((2, 32, 32), np.uint8), "batch"),
    (np.zeros((32, 32, 3), np.uint8), "images\\[None\\]"),
])
def test_clear_errors_for_bad_images(tokenizer, images, message):
    with pytest.raises(ValueError, match=message):
        tokenizer.encode(images)


def test_clear_errors_for_bad_codes(tokenizer):
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        tokenizer.decode(np.full((1, 8, 8), 64))
    with pytest.raises(ValueError, match=r"\[B, 8, 8\]"):
        tokenizer.decode(np.zeros((1, 4, 4), np.int32))
    with pytest.raises(ValueError, match="integers"):
        tokenizer.decode(np.zeros((1, 8, 8), np.float32))


def test_save_load_round_trip(tokenizer, tmp_path):
    tokenizer.save(tmp_path / "export")
    loaded = ImageTokenizer.load(tmp_path / "export", batch_size=2)
    images = shapes_images(3, seed=1)
    np.testing.assert_array_equal(loaded.encode(images), tokenizer.encode(images))
    with pytest.raises(FileNotFoundError, match="config.json"):
        ImageTokenizer.load(tmp_path / "missing")


# ------------------------------------------------------------------------------ encoder -------

def test_local_encoder_codes_background_away_from_the_object_alike():
    """One small object at the top left of a plain background: with the local encoder every
    code of the bottom-right 3x3 codes (>= 12 pixels from the object) is the same vector; with
    taming's global encoder each sees the object and the borders, so they differ."""
    from cm3leon_jax.tokenizers.vqgan import Encoder  # noqa: PLC0415

    scene = scenes.Scene(scenes.Background("plain", (180, 180, 180), (180, 180, 180)),
                         (scenes.Obj("cross", "red", "small", 0),))
    image = jnp.asarray(render.render(scene, 32)[None], jnp.float32) / 127.5 - 1.0
    spread = {}
    for context in ("global", "local"):
        encoder = Encoder(tiny_config(encoder_context=context))
        latents = encoder.apply(encoder.init(jax.random.key(0), image), image)[0]
        far = latents[5:, 5:].reshape(-1, latents.shape[-1])
        spread[context] = float(jnp.abs(far - far[0]).max() / jnp.abs(latents).max())
    assert spread["local"] < 1e-5 and spread["global"] > 0.01, spread


def test_local_encoder_is_refused_by_the_hugging_face_export_by_name():
    from cm3leon_jax.export import vqgan_hf  # noqa: PLC0415

    hf_like = dict(channels=32, norm_groups=32)
    assert vqgan_hf.why_not_convertible(tiny_config(**hf_like)) is None
    assert "vqgan.encoder_context='local'" in vqgan_hf.why_not_convertible(
        tiny_config(**hf_like, encoder_context="local"))


# ------------------------------------------------------------------------------ config --------

@pytest.mark.parametrize("overrides, field", [
    (dict(image_size=34), "vqgan.image_size"),
    (dict(downsample_factor=3, channel_multipliers=(1, 2)), "vqgan.downsample_factor"),
    (dict(channel_multipliers=(1, 2)), "vqgan.channel_multipliers"),
    (dict(codebook_size=1), "vqgan.codebook_size"),
    (dict(codebook_lookup="dot"), "vqgan.codebook_lookup"),
    (dict(encoder_context="patch"), "vqgan.encoder_context"),
    (dict(norm_groups=3), "vqgan.norm_groups"),
    (dict(attention_resolutions=(12,)), "vqgan.attention_resolutions"),
    (dict(discriminator_layers=4), "vqgan.discriminator_layers"),
])
def test_config_errors_name_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        config_lib.from_dict({**TINY, **overrides}, VQGANConfig, "vqgan")


# ------------------------------------------------------------------------------ training -----

def test_adaptive_weight_matches_full_backprop():
    """The VJP-through-the-last-conv shortcut equals autograd through the whole model."""
    config = tiny_config()
    model, disc = VQGAN(config), PatchDiscriminator(8, 2)
    images = losses.to_model_range(jnp.asarray(shapes_images(2)))
    variables = init_variables(config, seed=8)
    disc_params = jax.jit(disc.init)(jax.random.key(9, impl="rbg"), images)["params"]

    def forward(params):
        return model.apply({**variables, "params": params}, images)

    def rec_loss(params):
        return losses.reconstruction_loss(forward(params)[0], images, "l2")

    def gan_loss(params):
        return losses.generator_adversarial_loss(disc.apply({"params": disc_params},
                                                            forward(params)[0]))

    def last(grads):
        return grads["decoder"]["conv_out"]["kernel"]

    @jax.jit
    def both(params):
        expected = losses.adaptive_weight(last(jax.grad(rec_loss)(params)),
                                          last(jax.grad(gan_loss)(params)), 1e4)
        reconstructions, _, features = forward(params)
        rec_grad = jax.grad(lambda x: losses.reconstruction_loss(x, images, "l2"))(
            reconstructions)
        gan_grad = jax.grad(lambda x: losses.generator_adversarial_loss(
            disc.apply({"params": disc_params}, x)))(reconstructions)
        return expected, train_vqgan.adaptive_gan_weight(params, features, rec_grad, gan_grad,
                                                         1e4)

    expected, got = both(variables["params"])
    assert float(expected) > 0
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_training_steps_reduce_loss():
    """A few data-parallel steps (batch sharded over 8 fake devices) on one batch lower the loss."""
    config = tiny_config(reconstruction_loss="l2", mid_attention=False)
    train_cfg = VQGANTrainConfig(num_steps=40, batch_size=8, learning_rate=3e-3, warmup_steps=2)
    model, disc = VQGAN(config), PatchDiscriminator(8, 2)
    generator_tx, disc_tx = train_vqgan.make_optimizers(train_cfg)
    state = train_vqgan.init_state(model, disc, generator_tx, disc_tx, 32, seed=0)
    mesh = train_vqgan.make_mesh()
    batch = train_vqgan.global_batch(shapes_images(8, seed=2), mesh)
    assert len(batch.sharding.device_set) == jax.device_count()
    step = train_vqgan.compile_step(train_vqgan.make_train_step(
        model, disc, generator_tx, disc_tx, config, 0, use_gan=False), mesh)
    losses_seen = []
    for _ in range(15):
        state, metrics = step(state, batch)
        losses_seen.append(float(metrics["loss/reconstruction"]))
    assert np.mean(losses_seen[-3:]) < 0.6 * np.mean(losses_seen[:2])
    assert int(state.step) == 15


def _run_config(workdir, num_steps: int) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.data = dict(source="shapes", image_size=32, num_train=64, num_validation=16,
                    num_test=16, seed=0, data_dir=str(workdir / "tfds"))
    # The GAN turns on after step 1, so both compiled step variants run.
    cfg.vqgan = dict(TINY, discriminator_start=1, reconstruction_loss="l2", mid_attention=False,
                     restart_sampling="error")
    cfg.vqgan_train = dict(num_steps=num_steps, batch_size=8, warmup_steps=1, log_every=2,
                           image_every=100, checkpoint_every=2, eval_batch_size=8)
    return cfg


def test_train_resume_evaluate_and_export(tmp_path):
    """main() trains (GAN on from step 2), evaluates, exports; a longer rerun resumes."""
    workdir = tmp_path / "run"
    train_vqgan.main(_run_config(tmp_path, num_steps=3), str(workdir))
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "3"]
    state, _ = train_vqgan.train(_run_config(tmp_path, num_steps=4), str(workdir))
    assert int(state.step) == 4  # resumed from step 3: one more step, not four
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["3", "4"]
    config = tiny_config(mid_attention=False)
    fresh = train_vqgan.init_state(VQGAN(config), PatchDiscriminator(8, 2),
                                   *train_vqgan.make_optimizers(VQGANTrainConfig()), 32, seed=0)
    changed = jax.tree.map(lambda a, b: not np.allclose(a, b), state.disc_params,
                           fresh.disc_params)
    assert all(jax.tree.leaves(changed))  # the discriminator was trained (GAN steps ran)
    figures = json.loads((workdir / "metrics.json").read_text())["vqgan"]
    for key in ("psnr_db", "codebook_usage", "codebook_perplexity", "verifier_exact_match"):
        assert key in figures
    assert figures["num_images"] == 16
    tokenizer = ImageTokenizer.load(workdir)  # the export inside the workdir
    assert tokenizer.encode(shapes_images(2)).shape == (2, 8, 8)
    assert (workdir / "reconstructions.png").exists()
    assert list(workdir.glob("events.out.tfevents*"))


def test_config_mismatch_with_data_is_reported(tmp_path):
    cfg = _run_config(tmp_path, num_steps=2)
    cfg.vqgan.image_size = 64
    with pytest.raises(ConfigError, match=r"vqgan\.image_size.*data\.image_size"):
        train_vqgan.read_config(cfg)


def test_warm_start_from_another_resolution_trains_on_crops(tmp_path):
    """A 64-px tokenizer starts from a 32-px export's weights and trains on 32-px crops."""
    source_config = tiny_config(mid_attention=False)
    source = ImageTokenizer(source_config, init_variables(source_config, seed=5))
    source.save(tmp_path / "source")
    cfg = _run_config(tmp_path, num_steps=2)
    cfg.data.image_size = cfg.vqgan.image_size = 64
    cfg.vqgan_train.update(crop_size=32, init_from=str(tmp_path / "source"), learning_rate=1e-7,
                           checkpoint_every=100)
    data_cfg, _, train_cfg = train_vqgan.read_config(cfg)
    batch = next(train_vqgan.train_images(data_cfg, str(tmp_path), 4, seed=0, shuffle_buffer=8,
                                          crop_size=train_cfg.crop_size))
    assert batch.shape == (4, 32, 32, 3) and batch.dtype == np.uint8
    state, _ = train_vqgan.train(cfg, str(tmp_path / "run"))
    close = jax.tree.map(lambda a, b: np.allclose(a, b, atol=1e-4), state.params,
                         dict(source.variables["params"]))
    assert all(jax.tree.leaves(close))  # two steps at lr 1e-7 barely move the source weights
    fresh = init_variables(tiny_config(mid_attention=False, image_size=64), seed=0)["params"]
    assert not np.allclose(state.params["decoder"]["conv_out"]["kernel"],
                           fresh["decoder"]["conv_out"]["kernel"])

    other = tiny_config(mid_attention=False, codebook_size=32)
    ImageTokenizer(other, init_variables(other)).save(tmp_path / "other")
    cfg.vqgan_train.init_from = str(tmp_path / "other")
    with pytest.raises(ConfigError, match=r"init_from=.*another architecture.*codebook"):
        train_vqgan.train(cfg, str(tmp_path / "run_other"))
    cfg.vqgan_train.crop_size = 30
    with pytest.raises(ConfigError, match=r"vqgan_train\.crop_size=30.*multiple"):
        train_vqgan.read_config(cfg)


def test_warm_start_from_a_missing_export_names_the_field(tmp_path):
    cfg = _run_config(tmp_path, num_steps=2)
    cfg.vqgan_train.update(init_from=str(tmp_path / "nothing_here"))
    with pytest.raises(ConfigError, match=r"vqgan_train\.init_from=.*holds no image tokenizer"):
        train_vqgan.train(cfg, str(tmp_path / "run"))
