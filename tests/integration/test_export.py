"""Export to transformers and import back: parity, streaming, round trip, clear errors.

Tiny random models (2 layers, d_model 32-48) with every weight perturbed (the zero-initialised
output projections too, so no block is the identity), compared with transformers in float32 on
CPU: logits on mixed text-image sequences within 1e-4 and 32 greedy tokens identical
(transformers' `generate` against our KV-cache loop). Odd head count (3) and grouped-query
attention (3 query heads, 1 key/value head) included.
"""

import dataclasses
import functools
import importlib.util
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import yaml

from cm3leon_jax import results
from cm3leon_jax.config import (ConfigError, DataConfig, ModelConfig, TextTokenizerConfig,
                                TrainConfig, VocabConfig, VQGANConfig)
from cm3leon_jax.data.offline import provenance
from cm3leon_jax.export import hf_config, hf_export, hf_import, param_sources, verify
from cm3leon_jax.export.__main__ import ExportError, run_export
from cm3leon_jax.export.param_sources import InMemoryParams, MissingCheckpoint, OrbaxParams
from cm3leon_jax.export.safetensors_stream import TensorReader, read_header
from cm3leon_jax.models import init_params
from cm3leon_jax.tokenizers import losses
from cm3leon_jax.tokenizers.image_tokenizer import ImageTokenizer
from cm3leon_jax.tokenizers.text import TextTokenizer
from cm3leon_jax.tokenizers.vqgan import VQGAN
from cm3leon_jax.train import checkpoint
from cm3leon_jax.train.decoder_task import model_signature
from cm3leon_jax.train.state import TrainState
from cm3leon_jax.vocab import Vocabulary

import tiny_stack
import locations

REPO = str(locations.ROOT)
TOLERANCE = 1e-4
STEPS = 32


@functools.lru_cache(maxsize=None)
def _jitted_init(model: ModelConfig):
    return jax.jit(lambda key: init_params(model, key))


def perturbed_params(model: ModelConfig, seed: int) -> dict:
    """init_params plus N(0, 0.05) on every leaf, so zero-initialised projections matter."""
    params = jax.device_get(_jitted_init(model)(jax.random.key(seed)))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: (x + 0.05 * rng.standard_normal(x.shape)).astype(x.dtype),
                        params)


def stacked(params: dict, num_layers: int) -> dict:
    """Per-layer params (`layers_i`) in the scanned layout (`layers` with a leading axis)."""
    if "layers" in params:
        return params
    rest = {k: v for k, v in params.items() if not k.startswith("layers_")}
    layers = [params[f"layers_{i}"] for i in range(num_layers)]
    return dict(rest, layers=jax.tree.map(lambda *xs: np.stack(xs), *layers))


def assert_bit_exact(expected: dict, actual: dict) -> None:
    assert jax.tree.structure(expected) == jax.tree.structure(actual)
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(actual)):
        assert np.asarray(a).dtype == np.asarray(b).dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    """Text tokenizer + a VQ-GAN whose encoder HF's ChameleonVQVAE can express (32 groups)."""
    root = tmp_path_factory.mktemp("vocab")
    vq = VQGANConfig(image_size=16, downsample_factor=2, channels=32, channel_multipliers=(1, 2),
                     norm_groups=32, codebook_size=64, code_dim=8, mid_attention=True,
                     attention_resolutions=(8,))
    variables = jax.jit(VQGAN(vq).init)(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    image_path = ImageTokenizer(vq, variables, batch_size=4).save(root / "vqgan")
    text = TextTokenizer.train(iter(tiny_stack.CORPUS), TextTokenizerConfig(vocab_size=320))
    vocabulary = Vocabulary.build(text, str(image_path), VocabConfig(num_mask_sentinels=4))
    vocabulary.save(root / "vocab")
    return Vocabulary.load(root / "vocab")


CHAMELEON = ModelConfig(preset="chameleon", vocab_size=512, num_layers=2, d_model=48,
                        num_heads=3, num_kv_heads=1, mlp_dim=96, max_seq_len=96,
                        tie_embeddings=False, qk_norm=True, scan_layers=False, init_std=0.02)
CM3LEON = ModelConfig(preset="cm3leon", vocab_size=512, num_layers=2, d_model=48, num_heads=3,
                      max_seq_len=96, tie_embeddings=False, scan_layers=True, init_std=0.02,
                      position_init_std=0.02)


@pytest.fixture(scope="module")
def chameleon_export(vocab, tmp_path_factory):
    params = perturbed_params(CHAMELEON, 0)
    out = str(tmp_path_factory.mktemp("chameleon_hf"))
    report = hf_export.export_hf(InMemoryParams(params), CHAMELEON, out, vocab=vocab)
    return params, out, report


@pytest.fixture(scope="module")
def cm3leon_export(vocab, tmp_path_factory):
    params = perturbed_params(CM3LEON, 1)
    out = str(tmp_path_factory.mktemp("cm3leon_hf"))
    report = hf_export.export_hf(InMemoryParams(params), CM3LEON, out, vocab=vocab)
    return params, out, report


@pytest.mark.parametrize("which", ["chameleon", "cm3leon"])
def test_logits_and_greedy_match_transformers(which, vocab, request):
    params, out, _ = request.getfixturevalue(f"{which}_export")
    model = CHAMELEON if which == "chameleon" else CM3LEON
    ids = np.concatenate([verify.mixed_prompt(model, vocab, 24, np.random.default_rng(seed))
                          for seed in (0, 1)])
    result = verify.compare(params, model, out, ids, steps=STEPS, stop_at_eos=False)
    assert result["max_abs_logit_diff"] <= TOLERANCE
    assert result["theirs"].shape == (2, STEPS)
    np.testing.assert_array_equal(result["ours"], result["theirs"])
    hf_model = result["hf_model"]
    if which == "chameleon":
        # HF's forward masks image-code logits (text-only generation); the rest are ours.
        import torch

        with torch.no_grad():
            masked = hf_model(input_ids=torch.tensor(ids)).logits.numpy()
        image = vocab.image_mask()
        assert np.all(masked[..., image] == np.finfo(np.float32).min)
        np.testing.assert_array_equal(masked[..., ~image],
                                      verify.hf_logits(hf_model, ids)[..., ~image])
    else:
        assert type(hf_model).__name__ == "OPTForCausalLM"
        assert hf_model.config.activation_function == "gelu"
        assert not hf_model.config.enable_bias


def test_chameleon_vq_encoder_and_tokenizer_match_ours(chameleon_export, vocab):
    import torch
    import transformers

    _, out, report = chameleon_export
    assert any("VQ-GAN encoder" in note for note in report.notes)
    hf_model = verify.load_hf(out)
    images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    pixels = torch.tensor(np.asarray(losses.to_model_range(images))).permute(0, 3, 1, 2)
    with torch.no_grad():
        theirs = hf_model.model.get_image_tokens(pixels.float()).numpy()
    ours = vocab.image_tokenizer(batch_size=4).encode(images).reshape(3, -1) + vocab.image_offset
    np.testing.assert_array_equal(theirs, ours)
    mapping = hf_model.model.vocabulary_mapping
    assert mapping.image_tokens == list(range(vocab.image_offset, vocab.used_size))
    assert hf_model.config.image_token_id == vocab.used_size  # a padding id, never produced
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    for text in tiny_stack.CORPUS[:5] + ["two  spaces\tand\nlines 🙂 日本", " lead", "trail "]:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert ids == vocab.encode_text(text)
        assert tokenizer.decode(ids) == text
    assert tokenizer.convert_ids_to_tokens([vocab.boi_id, vocab.image_offset + 12]) == [
        "<boi>", "IMGIMGBCZ"]
    # The standalone loader written next to the weights gives the same ids and VQ-GAN.
    spec = importlib.util.spec_from_file_location("load_tokenizers",
                                                  os.path.join(out, "load_tokenizers.py"))
    loader = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loader)
    tokenizers = loader.load(out)
    assert tokenizers.encode_text("a red circle") == vocab.encode_text("a red circle")
    codes = vocab.image_tokenizer(batch_size=4).encode(images)
    np.testing.assert_array_equal(loader.load_image_tokenizer(out, batch_size=4).encode(images),
                                  codes)


def test_chameleon_swin_norm_tied_scanned_logits(vocab, tmp_path):
    model = dataclasses.replace(CHAMELEON, d_model=32, num_heads=4, num_kv_heads=2, mlp_dim=64,
                                swin_norm=True, tie_embeddings=True, scan_layers=True)
    params = perturbed_params(model, 2)
    hf_export.export_hf(InMemoryParams(params), model, str(tmp_path))
    hf_model = verify.load_hf(str(tmp_path))
    assert hf_model.config.swin_norm and hf_model.config.tie_word_embeddings
    ids = verify.mixed_prompt(model, vocab, 40, np.random.default_rng(3))
    difference = np.abs(verify.our_logits(params, model, ids) - verify.hf_logits(hf_model, ids))
    assert difference.max() <= TOLERANCE


@pytest.mark.parametrize("which", ["chameleon", "cm3leon"])
def test_export_then_import_is_bit_exact(which, request, tmp_path):
    params, out, _ = request.getfixturevalue(f"{which}_export")
    model = CHAMELEON if which == "chameleon" else CM3LEON
    report = hf_import.import_hf(out, str(tmp_path))
    assert report.model.preset == which and report.step == 0
    # The config file it writes is a usable --config: base experiment + the imported model.
    spec = importlib.util.spec_from_file_location("imported", report.config_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config()
    imported = ModelConfig(**cfg.model.to_dict())
    for field in ("preset", "vocab_size", "num_layers", "d_model", "num_heads", "kv_heads",
                  "hidden_dim", "max_seq_len", "tie_embeddings", "qk_norm", "swin_norm"):
        assert getattr(imported, field) == getattr(model, field), field
    assert "sft" in cfg and "train" in cfg  # the rest comes from the base experiment
    # SFT's own restore path (train.init_from / W/pretrain) reads it bit for bit.
    abstract = jax.eval_shape(lambda: init_params(imported, jax.random.key(0)))
    restored, step = checkpoint.restore_params(str(tmp_path / "pretrain"), abstract)
    assert step == 0
    assert_bit_exact(stacked(params, model.num_layers), jax.device_get(restored))
    # Exporting the imported params again reproduces every tensor exactly.
    again = str(tmp_path / "again")
    hf_export.export_hf(InMemoryParams(jax.device_get(restored)), imported, again)
    first, second = TensorReader(out), TensorReader(again)
    names = [n for n in first.names() if not n.startswith("model.vqmodel.")]
    assert names == second.names()
    for name in names:
        np.testing.assert_array_equal(first.read(name), second.read(name))
    # The export's tokenizers come back as W/vocab in the native format.
    restored_vocab = Vocabulary.load(tmp_path / "vocab")
    assert restored_vocab.encode_text("a red circle") == request.getfixturevalue(
        "vocab").encode_text("a red circle")
    assert restored_vocab.image_tokenizer(batch_size=2).codebook_size == 64
    # The import records that vocabulary's fingerprint: fine-tuning on data prepared with it
    # starts, data prepared with another vocabulary is refused by name.
    checkpoint.restore_params(str(tmp_path), abstract, restored_vocab.fingerprint)
    with pytest.raises(checkpoint.IncompatibleCheckpoint, match="another vocabulary"):
        checkpoint.restore_params(str(tmp_path), abstract, "0" * 64)


MESH_MODEL = ModelConfig(preset="cm3leon", vocab_size=512, num_layers=2, d_model=32,
                         num_heads=2, max_seq_len=64, tie_embeddings=True, scan_layers=True,
                         init_std=0.02, position_init_std=0.02)


@pytest.fixture(scope="module")
def mesh_workdir(vocab, tmp_path_factory):
    """A pretraining-style workdir whose checkpoint was saved from params (and Adam moments)
    sharded over 8 devices, with a data card and metrics for the model card."""
    workdir = tmp_path_factory.mktemp("mesh_run")
    params = perturbed_params(MESH_MODEL, 4)
    devices = np.array(jax.devices()[:8])
    mesh = jax.sharding.Mesh(devices, ("fsdp",))

    def shard(x):
        axis = next((i for i, size in enumerate(x.shape) if size % len(devices) == 0), None)
        spec = [None] * x.ndim
        if axis is not None:
            spec[axis] = "fsdp"
        return jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(
            *spec)))

    sharded = jax.tree.map(shard, params)
    assert len(jax.tree.leaves(sharded)[0].sharding.device_set) == 8
    state = TrainState.create(sharded, optax.adamw(1e-3), jax.random.key(0))
    vocab_dir = str(tmp_path_factory.mktemp("run_vocab"))
    vocab.save(vocab_dir)
    meta = {"model": model_signature(MESH_MODEL), "data_fingerprint": "f" * 64,
            "task": "pretrain",
            "config": {"model": dataclasses.asdict(MESH_MODEL),
                       "prepare": {"vocab_dir": vocab_dir}}}
    saver = checkpoint.Checkpoints(str(workdir / "pretrain" / "checkpoints"),
                                   TrainConfig(async_checkpoints=False, keep_best=False))
    saver.save(7, state, {"batches": 7}, meta)
    saver.close()
    counts = provenance.SplitCounts()
    counts.keep({"source": "shapes://generated", "license": "CC0-1.0"}, tokens=100)
    provenance.write_card(str(workdir), data_set="shapes",
                          policy=provenance.Policy.from_config(DataConfig()),
                          splits={"train": counts}, tokenizers={"vocabulary": vocab_dir},
                          shards_fingerprint="f" * 64)
    results.write_metrics(str(workdir), "pretrain", {
        "train_loss": 3.5, "steps": 7, "eval": {"validation": {"loss": 3.25, "perplexity": 25.8}}})
    return workdir, params


def test_streaming_export_of_mesh_checkpoint_is_sharded_and_loads(mesh_workdir, tmp_path):
    workdir, params = mesh_workdir
    location = param_sources.find_checkpoint(str(workdir))
    assert (location.stage, location.step) == ("pretrain", 7)
    source = OrbaxParams(location)
    report = hf_export.export_hf(source, MESH_MODEL, str(tmp_path), max_shard_bytes=20_000)
    # One read per tensor (a layer of a stacked leaf at a time), the Adam moments never.
    per_tensor = [x.nbytes // MESH_MODEL.num_layers if path[0].key == "layers" else x.nbytes
                  for path, x in jax.tree_util.tree_flatten_with_path(params)[0]
                  for _ in range(MESH_MODEL.num_layers if path[0].key == "layers" else 1)]
    assert source.reads == len(per_tensor)
    assert report.largest_leaf_read == max(per_tensor)
    assert report.params_bytes_read == sum(x.nbytes for x in jax.tree.leaves(params))
    assert len(report.files) >= 4 and all(f.startswith("model-0000") for f in report.files)
    with open(tmp_path / "model.safetensors.index.json") as handle:
        index = json.load(handle)
    assert sorted(set(index["weight_map"].values())) == sorted(report.files)
    assert index["metadata"]["total_size"] == report.tensor_bytes
    for name in report.files:  # at most max_shard_bytes of tensors, or one oversized tensor
        header, _ = read_header(str(tmp_path / name))
        header.pop("__metadata__")
        sizes = [entry["data_offsets"][1] - entry["data_offsets"][0] for entry in header.values()]
        assert sum(sizes) <= 20_000 or len(sizes) == 1
    hf_model = verify.load_hf(str(tmp_path))
    ids = np.random.default_rng(5).integers(0, 512, (3, 16))
    difference = np.abs(verify.our_logits(params, MESH_MODEL, ids)
                        - verify.hf_logits(hf_model, ids))
    assert difference.max() <= TOLERANCE


def test_command_line_export_verifies_and_writes_model_card(mesh_workdir, tmp_path):
    workdir, _ = mesh_workdir
    out = tmp_path / "hf"
    command = [sys.executable, "-m", "cm3leon_jax.export", "--workdir", str(workdir),
               "--format", "hf", "--out", str(out), "--stage", "pretrain", "--verify",
               "--license", "apache-2.0"]
    env = dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS="", TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "verify: max |logit difference|" in done.stdout
    assert "greedy decoding identical" in done.stdout
    difference = float(done.stdout.split("max |logit difference| ")[1].split(";")[0])
    assert difference <= TOLERANCE
    card = (out / "README.md").read_text()
    header = yaml.safe_load(card.split("---")[1])
    assert header["license"] == "apache-2.0" and header["datasets"] == ["shapes"]
    metrics = {m["name"]: m["value"] for m in header["model-index"][0]["results"][0]["metrics"]}
    assert metrics["pretrain validation loss"] == 3.25
    assert "CC0-1.0" in card and "step: 7" in card
    assert (out / "cm3leon_vocab" / "image_tokenizer" / "model.safetensors").exists()
    assert (out / "tokenizer.json").exists() and (out / "load_tokenizers.py").exists()
    # ... and the import command takes the export back into a fresh workdir for SFT.
    target = tmp_path / "imported"
    done = subprocess.run([sys.executable, "-m", "cm3leon_jax.export", "import", "--from",
                           str(out), "--workdir", str(target)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"next: python -m cm3leon_jax.sft --config {target}/imported_config.py" in done.stdout
    assert "--config.model.d_model=32" in done.stdout
    assert (target / "pretrain" / "checkpoints" / "0").exists()
    assert (target / "vocab" / "image_tokenizer" / "variables.msgpack").exists()


def test_bfloat16_export_loads(mesh_workdir, tmp_path):
    import ml_dtypes
    import torch

    _, params = mesh_workdir
    report = hf_export.export_hf(InMemoryParams(params), MESH_MODEL, str(tmp_path),
                                 dtype="bfloat16")
    reader = TensorReader(str(tmp_path))
    embedding = reader.read("model.decoder.embed_tokens.weight")
    assert embedding.dtype == ml_dtypes.bfloat16 and report.tensor_bytes < 100_000
    np.testing.assert_array_equal(
        embedding, params["embed_tokens"]["embedding"].astype(ml_dtypes.bfloat16))
    with open(tmp_path / "config.json") as handle:
        assert json.load(handle)["dtype"] == "bfloat16"
    hf_model = verify.load_hf(str(tmp_path))  # upcast to float32 on load: exact
    loaded = hf_model.model.decoder.embed_tokens.weight.detach().to(torch.float32).numpy()
    np.testing.assert_array_equal(loaded, embedding.astype(np.float32))


def test_tf_saved_model_matches_our_logits(mesh_workdir, tmp_path):
    import tensorflow as tf

    workdir, params = mesh_workdir
    report = run_export(str(workdir), str(tmp_path), fmt="tf_saved_model", seq_len=16,
                        batch_size=3)
    assert (report.batch_size, report.seq_len) == (3, 16)
    loaded = tf.saved_model.load(str(tmp_path))
    ids = np.random.default_rng(6).integers(0, 512, (3, 16)).astype(np.int32)
    theirs = loaded.logits(tf.constant(ids)).numpy()
    np.testing.assert_allclose(theirs, verify.our_logits(params, MESH_MODEL, ids), atol=1e-5)


def test_clear_errors(mesh_workdir, tmp_path):
    workdir, params = mesh_workdir
    with pytest.raises(ExportError, match="onnx.*hf.*tf_saved_model"):
        run_export(str(workdir), str(tmp_path), fmt="onnx")
    with pytest.raises(MissingCheckpoint, match="pretrain"):
        run_export(str(tmp_path), str(tmp_path / "out"))
    with pytest.raises(MissingCheckpoint, match="no step 3"):
        param_sources.find_checkpoint(str(workdir), "pretrain", 3)
    grouped = dataclasses.replace(MESH_MODEL, num_kv_heads=1)
    with pytest.raises(hf_config.UnsupportedByTarget, match="num_kv_heads.*chameleon preset"):
        hf_config.check_exportable(grouped)
    with pytest.raises(hf_config.UnsupportedByTarget, match="qk_norm=True"):
        hf_config.check_exportable(dataclasses.replace(CHAMELEON, qk_norm=False))
    with pytest.raises(hf_config.UnsupportedByTarget, match="norm_eps=1e-05"):
        hf_config.check_exportable(dataclasses.replace(CHAMELEON, norm_eps=1e-6))
    with pytest.raises(hf_config.UnsupportedByTarget, match="swin_norm"):
        hf_config.check_exportable(dataclasses.replace(MESH_MODEL, swin_norm=True))
    wrong = ml_collections.ConfigDict({"model": dataclasses.asdict(
        dataclasses.replace(MESH_MODEL, d_model=64))})
    with pytest.raises(ConfigError, match="do not match config.model"):
        run_export(str(workdir), str(tmp_path / "wrong"), override=wrong)
    opt_with_biases = {"model_type": "opt", "hidden_size": 32, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "vocab_size": 512, "ffn_dim": 128,
                       "max_position_embeddings": 64, "activation_function": "gelu"}
    with pytest.raises(hf_config.UnsupportedByTarget, match="enable_bias"):
        hf_config.model_config_from_hf(opt_with_biases)
    with pytest.raises(FileNotFoundError, match="config.json"):
        hf_import.import_hf(str(tmp_path), str(tmp_path / "w"))


@pytest.mark.parametrize("which", ["opt", "chameleon"])
def test_import_of_a_checkpoint_written_by_transformers(which, vocab, tmp_path):
    """A checkpoint `save_pretrained` wrote (random weights, OPT position rows 0-1 included)
    imports to params whose logits are transformers' own."""
    import torch
    import transformers

    from cm3leon_jax.export import tokenizer_files

    torch.manual_seed(0)
    if which == "opt":
        config = transformers.OPTConfig(
            vocab_size=512, hidden_size=32, num_hidden_layers=2, ffn_dim=64,
            num_attention_heads=2, max_position_embeddings=64, enable_bias=False,
            layer_norm_elementwise_affine=False, activation_function="gelu",
            word_embed_proj_dim=32, tie_word_embeddings=False, init_std=0.1)
        hf_model = transformers.OPTForCausalLM(config)
    else:
        config = transformers.ChameleonConfig(
            vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
            initializer_range=0.1,
            vocabulary_map=tokenizer_files.chameleon_vocabulary_map(vocab, 512),
            vq_config=dict(base_channels=32, channel_multiplier=[1], num_res_blocks=1,
                           embed_dim=8, latent_channels=8, num_embeddings=64, resolution=16))
        hf_model = transformers.ChameleonForConditionalGeneration(config)
        with torch.no_grad():  # non-trivial QK-norm weights (HF initialises them to 1 and 0)
            for name, tensor in hf_model.named_parameters():
                if "_norm" in name or "layernorm" in name:
                    tensor.add_(0.1 * torch.randn_like(tensor))
    hf_model.save_pretrained(str(tmp_path / "hf"))
    report = hf_import.import_hf(str(tmp_path / "hf"), str(tmp_path / "w"))
    assert report.vocab_dir is None and report.notes  # a foreign checkpoint has no tokenizers
    abstract = jax.eval_shape(lambda: init_params(report.model, jax.random.key(0)))
    params, _ = checkpoint.restore_params(str(tmp_path / "w" / "pretrain"), abstract)
    ids = np.random.default_rng(7).integers(0, 512, (2, 20))
    ours = verify.our_logits(jax.device_get(params), report.model, ids)
    theirs = verify.hf_logits(hf_model.eval(), ids)
    assert np.max(np.abs(ours - theirs)) <= TOLERANCE
