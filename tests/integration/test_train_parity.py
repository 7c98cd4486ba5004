"""Training parity with Hugging Face torch: gradients and a short loss curve.

Batches come from the real chain: `prepare` (Beam) writes shards of `shapes` documents with tiny
random tokenizers, and the tf.data pipeline makes CM3-masked, packed pretraining rows and SFT rows
with their prompt masked; a one-pass stream's last batch adds padding rows. Both presets export to
transformers (`OPTForCausalLM`, `ChameleonForConditionalGeneration`), and torch autograd on the
export is the oracle: every gradient tensor within 1e-4 relative (norm of the difference over the
norm), for every attention choice that runs on CPU (xla; splash in Pallas interpret mode), with
the hand-written backward passes and with JAX's autodiff, with gradient accumulation, and packed
rows equal to their unpacked form on our side. Then 8 optimizer
steps of our training loop against torch AdamW (same mask, schedule, clipping): the loss of every
step within 1e-3 relative, and within 2e-2 with bfloat16 compute (`benchmarks/train_parity.py`
runs the 100-step version).
"""

import dataclasses
import functools
import importlib.util

import jax
import numpy as np
import pytest

from cm3leon_jax import config, paths
from cm3leon_jax.config import ModelConfig, TrainConfig
from cm3leon_jax.data.input import pipeline
from cm3leon_jax.data import prepare
from cm3leon_jax.export import hf_export, train_parity, verify
from cm3leon_jax.export.param_sources import InMemoryParams
from cm3leon_jax.models import init_params

import tiny_stack
import locations

REPO = locations.ROOT
SEQ_LEN = 256  # two 128-token query blocks: the blockwise causal path of `xla` runs
GRAD_TOLERANCE = 1e-4
CURVE_TOLERANCE = 1e-3
BF16_TOLERANCE = 2e-2
ROWS = 12  # unpacked batches are padded to this many rows (one compiled shape per preset)

MODELS = {
    # head_dim 64: what the splash kernel tiles.
    "cm3leon": ModelConfig(preset="cm3leon", vocab_size=512, num_layers=2, d_model=128,
                           num_heads=2, max_seq_len=SEQ_LEN, tie_embeddings=True,
                           scan_layers=False, z_loss=1e-4),
    "chameleon": ModelConfig(preset="chameleon", vocab_size=512, num_layers=2, d_model=128,
                             num_heads=2, num_kv_heads=1, mlp_dim=192, max_seq_len=SEQ_LEN,
                             tie_embeddings=False, qk_norm=True, scan_layers=True, z_loss=1e-4),
}


def _sft_tiny():
    spec = importlib.util.spec_from_file_location("sft_tiny", REPO / "experiments" / "sft_tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """(prepared dir, vocabulary, config): `prepare` on 40 `shapes` documents."""
    root = tmp_path_factory.mktemp("parity")
    vocab = tiny_stack.fast_random_vocab(root / "vocab")
    cfg = _sft_tiny()
    cfg.data.update(dict(num_train=40, num_validation=8, num_test=8))
    cfg.prepare.update(dict(num_shards=1, encode_batch_size=16, retrieval="off",
                            vocab_dir=str(root / "vocab"), splits=("train",)))
    cfg.cm3.seq_len = SEQ_LEN
    prepare.prepare(cfg, str(root))
    return paths.Workdir(str(root)).prepared, vocab, cfg


def _pad_rows(batch, rows, pad_id):
    count = batch["ids"].shape[0]
    assert count <= rows, f"{count} documents do not fit {rows} rows"
    fill = {"ids": pad_id, "segment_ids": 0, "positions": 0, "weights": 0.0}
    return {k: np.concatenate([v, np.full((rows - count,) + v.shape[1:], fill[k], v.dtype)])
            for k, v in batch.items()}


@pytest.fixture(scope="module")
def batches(project):
    """{kind: (packed batch, its unpacked form padded to ROWS rows)} from the pipeline."""
    prepared, vocab, cfg = project
    special = pipeline.special_ids(vocab)
    cm3 = config.cm3_config(cfg)
    host = dict(process_index=0, process_count=1)
    pretrain = train_parity.take_batches(pipeline.pretrain_dataset(
        prepared, "train", special, cm3, batch_size=4, seed=3, **host), 1)[0]
    sft = train_parity.take_batches(pipeline.sft_dataset(
        prepared, "train", vocab, cm3, config.sft_config(cfg), batch_size=4, seed=3, **host), 1)[0]
    one_pass = list(pipeline.pretrain_dataset(prepared, "train", special, cm3, batch_size=3,
                                              repeat=False, num_batches=8, **host)
                    .as_numpy_iterator())
    empty_rows = [np.all(b["segment_ids"] == 0, axis=1) for b in one_pass]
    padded = next(b for b, empty in zip(one_pass, empty_rows) if empty.any() and not empty.all())
    padded = {k: np.asarray(padded[k]) for k in train_parity.BATCH_KEYS}
    out = {}
    for kind, batch in (("pretrain", pretrain), ("sft", sft), ("padding", padded)):
        out[kind] = (batch, _pad_rows(train_parity.unpack_rows(batch, special.pad), ROWS,
                                      special.pad))
    return out


def test_the_batches_are_what_they_claim(batches, project):
    vocab = project[1]
    pretrain, _ = batches["pretrain"]
    assert pretrain["segment_ids"].max() > 1, "pretraining rows should pack several documents"
    sentinels = set(pipeline.special_ids(vocab).sentinels)
    assert np.isin(pretrain["ids"], list(sentinels)).any(), "no CM3 span was masked"
    sft, _ = batches["sft"]
    real = sft["segment_ids"] != 0
    assert np.any(real & (sft["weights"] == 0)), "no prompt token is masked out of the loss"
    assert np.any(sft["weights"] > 0)
    padded, _ = batches["padding"]
    assert np.any(np.all(padded["segment_ids"] == 0, axis=1)), "no all-padding row"


@functools.lru_cache(maxsize=None)
def _params(preset: str):
    """Initial parameters with every leaf perturbed: the zero-initialised output projections
    would otherwise leave the other weights of each block without gradient."""
    model = MODELS[preset]
    params = jax.device_get(jax.jit(lambda key: init_params(model, key))(jax.random.key(1)))
    rng = np.random.default_rng(1)
    return jax.tree.map(lambda x: (x + 0.02 * rng.standard_normal(x.shape)).astype(x.dtype),
                        params)


@pytest.fixture(scope="module")
def exports(project, tmp_path_factory):
    """{preset: the exported transformers model, float32}."""
    vocab = project[1]
    out = {}
    for preset, model in MODELS.items():
        directory = str(tmp_path_factory.mktemp(f"{preset}_hf"))
        hf_export.export_hf(InMemoryParams(_params(preset)), model, directory, vocab=vocab)
        out[preset] = verify.load_hf(directory)
    return out


def _image_range(vocab):
    return vocab.image_offset, vocab.image_offset + vocab.codebook_size


@pytest.fixture(scope="module")
def torch_grads(exports, batches):
    return {(preset, kind): train_parity.torch_loss_and_grads(
                exports[preset], unpacked, MODELS[preset].z_loss)
            for preset in MODELS for kind, (_, unpacked) in batches.items()}


@pytest.mark.parametrize("backward", ["custom", "autodiff"])
@pytest.mark.parametrize("attention", ["xla", "splash"])
@pytest.mark.parametrize("preset", list(MODELS))
def test_gradients_match_torch(preset, attention, backward, batches, torch_grads, project):
    """Hand-written backward passes and JAX's autodiff alike (`config.model.backward`)."""
    model = dataclasses.replace(MODELS[preset], attention=attention, backward=backward)
    image_range = _image_range(project[1])
    params = _params(preset)
    for kind, (packed, unpacked) in batches.items():
        theirs_loss, theirs = torch_grads[(preset, kind)]
        # Accumulation over 2 micro-batches on our side against one batch on torch's.
        ours_loss, ours = train_parity.our_loss_and_grads(params, model, unpacked, image_range,
                                                          micro_batches=2)
        assert ours_loss == pytest.approx(theirs_loss, rel=1e-5), kind
        errors = train_parity.relative_errors(train_parity.grads_by_hf_name(ours, model), theirs)
        worst = max(errors, key=errors.get)
        assert errors[worst] <= GRAD_TOLERANCE, (kind, worst, errors[worst])
        assert all(np.linalg.norm(g) > 0 for g in theirs.values()), "a gradient is zero"
        # Packed rows (several documents, segment ids) against their unpacked form, ours only.
        packed_loss, packed_grads = train_parity.our_loss_and_grads(params, model, packed,
                                                                    image_range)
        assert packed_loss == pytest.approx(ours_loss, rel=1e-5), kind
        packed_errors = train_parity.relative_errors(
            train_parity.grads_by_hf_name(packed_grads, model),
            train_parity.grads_by_hf_name(ours, model))
        assert max(packed_errors.values()) <= GRAD_TOLERANCE, kind


@pytest.mark.parametrize("preset", list(MODELS))
def test_loss_curve_matches_torch(preset, batches, project, tmp_path):
    """8 steps from our own initial weights (zero output projections included): our loop on
    packed rows with 2 micro-batches against torch on their unpacked form, one batch."""
    vocab = project[1]
    model = MODELS[preset]
    params = jax.device_get(init_params(model, jax.random.key(2)))
    directory = str(tmp_path / "hf")
    hf_export.export_hf(InMemoryParams(params), model, directory, vocab=vocab)
    hf_model = verify.load_hf(directory)
    kinds = ("pretrain", "sft")
    train = TrainConfig(steps=8, batch_size=4, micro_batches=2, lr=3e-3, warmup_steps=3,
                        decay="cosine", weight_decay=0.1, grad_clip=0.5, eps=1e-8)
    ours = train_parity.our_loss_curve(params, model, train, [batches[k][0] for k in kinds],
                                       _image_range(vocab), str(tmp_path / "ours"))
    theirs = train_parity.torch_loss_curve(hf_model, train, [batches[k][1] for k in kinds],
                                           model.z_loss)
    assert train_parity.max_relative_difference(ours, theirs) <= CURVE_TOLERANCE, (ours, theirs)
    assert theirs[-1] < theirs[0] - 0.1, "the loss should fall"
    # bfloat16 compute, float32 master weights: within the tolerance the 100-step benchmark
    # measured against the float32 torch curve (docs/BENCHMARKS.md, "Training parity").
    bf16 = train_parity.our_loss_curve(params, dataclasses.replace(model, dtype="bfloat16"),
                                       dataclasses.replace(train, micro_batches=1),
                                       [batches[k][0] for k in kinds], _image_range(vocab),
                                       str(tmp_path / "ours_bf16"))
    assert train_parity.max_relative_difference(bf16, theirs) <= BF16_TOLERANCE, (bf16, theirs)


def test_schedule_is_optax_schedule():
    """The torch side's formula and our optax schedule agree at every step."""
    from cm3leon_jax.train import optimizer

    for decay in ("cosine", "linear", "constant"):
        train = TrainConfig(steps=50, lr=2e-3, warmup_steps=7, decay=decay, end_lr_fraction=0.1)
        schedule = optimizer.learning_rate(train)
        ours = np.array([float(schedule(step)) for step in range(60)])
        theirs = np.array([train.lr * train_parity.lr_multiplier(train, s) for s in range(60)])
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-12)


def test_weight_decay_masks_agree(exports):
    """Our mask (by our parameter paths) and the torch groups (by transformers' names) decay
    the same tensors."""
    from cm3leon_jax.export import hf_tensors
    from cm3leon_jax.train import optimizer

    for preset, hf_model in exports.items():
        model = MODELS[preset]
        train = TrainConfig()
        mask = optimizer.weight_decay_mask(_params(preset), train)
        hf_params = dict(hf_model.named_parameters())
        for rule in hf_tensors.tensor_rules(model):
            layers = range(model.num_layers) if rule.per_layer else [None]
            for layer in layers:
                path, _ = hf_tensors.layer_leaf_path(rule, layer or 0, model.scan_layers)
                ours = mask
                for key in path:
                    ours = ours[key]
                name = rule.name(layer)
                theirs = train_parity._decays(name, hf_params[name], train)  # noqa: SLF001
                assert bool(ours) == theirs, (preset, name)
