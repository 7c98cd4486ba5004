"""Loss-curve parity: our training loop against Hugging Face torch, 100 steps, both presets.

    PYTHONPATH=. python benchmarks/train_parity.py                 # builds a small project
    PYTHONPATH=. python benchmarks/train_parity.py --project W     # W's prepared shards + vocab

From the same initial weights (ours, exported with `cm3leon_jax.export`), the same batches (from
the tf.data pipeline: CM3-masked packed pretraining rows and SFT rows with their prompt masked,
alternating), the same AdamW (betas, eps, weight decay and its mask, warmup + cosine schedule,
global-norm clipping), both sides train `--steps` steps:

* torch: `OPTForCausalLM` / `ChameleonForConditionalGeneration` loaded from the export, float32,
  fed the rows unpacked (one document per row; transformers has no segment ids), one batch per
  step, `torch.optim.AdamW` (`cm3leon_jax/export/train_parity.py` says how each piece is written);
* ours: `train/loop.py` on the packed rows, float32, (a) one batch per step, (b) the batch split
  into `--micro_batches` accumulated micro-batches, (c) bfloat16 compute with float32 master
  weights, one batch per step.

The loss of every step (the one its update is computed from) is compared as |ours - torch| /
torch; the figure per run is the largest over the steps. Writes benchmarks/results/
train_parity.json and benchmarks/results/train_parity.png (the curves) plus
train_parity_difference.png (the per-step relative difference, log scale).

Without --project the project is built here in a temporary directory: `shapes` (600 training
scenes, level 3), a sentencepiece tokenizer trained on its captions, a randomly initialised
VQ-GAN (the codes only need to be a fixed function of the image), `prepare` without retrieval.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import platform
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_WORKDIR = flags.DEFINE_string("project", "", "A project with prepared shards (default: build one).")
_STEPS = flags.DEFINE_integer("steps", 100, "Optimizer steps.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Packed rows per step (ours).")
_MICRO = flags.DEFINE_integer("micro_batches", 4, "Micro-batches of the accumulation run.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 256, "Tokens per row.")
_PRESETS = flags.DEFINE_list("presets", ["cm3leon", "chameleon"], "Model presets to run.")
_LRS = flags.DEFINE_list("lrs", ["1e-3", "3e-3"], "Peak learning rates, one run set each.")
_OUTPUT = flags.DEFINE_string(
    "output", str(pathlib.Path(__file__).resolve().parent / "results" / "train_parity.json"),
    "Where to write the JSON results (PNGs go beside it).")

F32_BOUND = 1e-3  # the bound for float32, reported against, never loosened


def build_project(root: str, seq_len: int):
    """A small prepared project: shapes data, trained text tokenizer, random VQ-GAN, prepare."""
    import jax
    import jax.numpy as jnp

    from cm3leon_jax import config
    from cm3leon_jax.config import TextTokenizerConfig, VocabConfig, VQGANConfig
    from cm3leon_jax.data.sources import catalog
    from cm3leon_jax.data import prepare
    from cm3leon_jax.tokenizers.image_tokenizer import ImageTokenizer
    from cm3leon_jax.tokenizers.text import TextTokenizer
    from cm3leon_jax.tokenizers.vqgan import VQGAN
    from cm3leon_jax.vocab import Vocabulary

    cfg = _experiment_config()
    cfg.data.update(dict(num_train=600, num_validation=8, num_test=8))
    cfg.prepare.update(dict(num_shards=2, encode_batch_size=64, retrieval="off",
                            vocab_dir=os.path.join(root, "vocab"), splits=("train",)))
    cfg.cm3.seq_len = seq_len
    data = config.data_config(cfg)
    captions = [e["caption"] for e in catalog.numpy_examples(data, root, "train")]
    text = TextTokenizer.train(iter(captions), TextTokenizerConfig(vocab_size=320))
    vq = VQGANConfig(image_size=32, downsample_factor=4, channels=16, channel_multipliers=(1, 2, 2),
                     norm_groups=8, codebook_size=256, code_dim=8, mid_attention=False)
    variables = jax.jit(VQGAN(vq).init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    image_path = ImageTokenizer(vq, variables, batch_size=64).save(os.path.join(root, "vqgan"))
    Vocabulary.build(text, str(image_path), VocabConfig(num_mask_sentinels=16)).save(
        os.path.join(root, "vocab"))
    prepare.prepare(cfg, root)
    return cfg


def _experiment_config():
    import importlib.util

    path = pathlib.Path(__file__).resolve().parent.parent / "experiments" / "sft_tiny.py"
    spec = importlib.util.spec_from_file_location("sft_tiny", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def pipeline_batches(prepared, vocab, cfg, count: int, batch_size: int):
    """`count` packed batches, alternately pretraining (CM3) and SFT, from the tf.data pipeline."""
    from cm3leon_jax import config
    from cm3leon_jax.data.input import pipeline
    from cm3leon_jax.export import train_parity

    host = dict(process_index=0, process_count=1)
    cm3 = config.cm3_config(cfg)
    pretrain = train_parity.take_batches(pipeline.pretrain_dataset(
        prepared, "train", pipeline.special_ids(vocab), cm3, batch_size=batch_size, seed=0,
        **host), (count + 1) // 2)
    sft = train_parity.take_batches(pipeline.sft_dataset(
        prepared, "train", vocab, cm3, config.sft_config(cfg), batch_size=batch_size, seed=0,
        **host), count // 2)
    return [pretrain[i // 2] if i % 2 == 0 else sft[i // 2] for i in range(count)]


def models(vocab_size: int, seq_len: int):
    from cm3leon_jax.config import ModelConfig

    return {
        "cm3leon": ModelConfig(preset="cm3leon", vocab_size=vocab_size, num_layers=4, d_model=128,
                               num_heads=4, max_seq_len=seq_len, tie_embeddings=True,
                               scan_layers=False),
        "chameleon": ModelConfig(preset="chameleon", vocab_size=vocab_size, num_layers=4,
                                 d_model=128, num_heads=4, num_kv_heads=2, max_seq_len=seq_len,
                                 tie_embeddings=False, qk_norm=True, scan_layers=True,
                                 z_loss=1e-5),
    }


def train_config(preset: str, steps: int, batch_size: int, lr: float):
    from cm3leon_jax.config import TrainConfig

    # Chameleon's eps is the paper's 1e-5; CM3leon keeps AdamW's usual 1e-8.
    return TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=10,
                       decay="cosine", end_lr_fraction=0.1, b1=0.9, b2=0.95,
                       eps=1e-5 if preset == "chameleon" else 1e-8, weight_decay=0.1,
                       grad_clip=1.0)


def main(argv):
    del argv
    import jax
    import numpy as np

    from cm3leon_jax import paths, plots
    from cm3leon_jax.data.input import pipeline
    from cm3leon_jax.export import hf_export, train_parity, verify
    from cm3leon_jax.export.param_sources import InMemoryParams
    from cm3leon_jax.models import init_params
    from cm3leon_jax.vocab import Vocabulary

    scratch = tempfile.mkdtemp(prefix="train_parity_")
    if _WORKDIR.value:
        root = _WORKDIR.value
        cfg = _experiment_config()
        cfg.cm3.seq_len = _SEQ_LEN.value
    else:
        root = os.path.join(scratch, "project")
        start = time.perf_counter()
        cfg = build_project(root, _SEQ_LEN.value)
        print(f"[train_parity] built the project in {time.perf_counter() - start:.0f} s")
    prepared = paths.Workdir(root).prepared
    vocab = Vocabulary.load(pipeline.read_manifest(prepared)["vocab"])
    image_range = (vocab.image_offset, vocab.image_offset + vocab.codebook_size)
    vocab_size = vocab.vocab_size
    batches = pipeline_batches(prepared, vocab, cfg, _STEPS.value, _BATCH.value)
    unpacked = [train_parity.unpack_rows(b, vocab.pad_id) for b in batches]
    rows = [int(np.sum(np.any(b["segment_ids"] != 0, axis=1))) for b in batches]
    documents = [u["ids"].shape[0] for u in unpacked]
    print(f"[train_parity] {len(batches)} batches: {np.mean(rows):.1f} packed rows with "
          f"{np.mean(documents):.1f} documents each on average")

    results = {"steps": _STEPS.value, "batch_rows": _BATCH.value, "seq_len": _SEQ_LEN.value,
               "micro_batches": _MICRO.value, "float32_bound": F32_BOUND,
               "machine": {"cpu": platform.processor() or platform.machine(),
                           "cores": os.cpu_count(), "jax": jax.__version__},
               "documents_per_batch": float(np.mean(documents)), "runs": {}}
    curve_panels, difference_panels = {}, {}
    for preset in _PRESETS.value:
        model = models(vocab_size, _SEQ_LEN.value)[preset]
        params = jax.device_get(init_params(model, jax.random.key(0)))
        export_dir = os.path.join(scratch, f"{preset}_hf")
        hf_export.export_hf(InMemoryParams(params), model, export_dir, vocab=vocab)
        for lr in (float(x) for x in _LRS.value):
            train = train_config(preset, _STEPS.value, _BATCH.value, lr)
            key = f"{preset} lr {lr:g}"
            runs = {}
            for name, to_dtype in (("torch float32", lambda m: m),
                                   ("torch float64", lambda m: m.double())):
                start = time.perf_counter()
                runs[name] = {"losses": train_parity.torch_loss_curve(
                    to_dtype(verify.load_hf(export_dir)), train, unpacked, model.z_loss),
                    "seconds": time.perf_counter() - start}
            variants = {
                "ours float32": (model, train),
                f"ours float32, {_MICRO.value} micro-batches": (
                    model, dataclasses.replace(train, micro_batches=_MICRO.value)),
                "ours bfloat16 compute": (dataclasses.replace(model, dtype="bfloat16"), train)}
            for name, (variant_model, variant_train) in variants.items():
                start = time.perf_counter()
                losses = train_parity.our_loss_curve(
                    params, variant_model, variant_train, batches, image_range,
                    os.path.join(scratch, key.replace(" ", "_"), name.replace(" ", "_")))
                runs[name] = {"losses": losses, "seconds": time.perf_counter() - start}
            reference = np.asarray(runs["torch float32"]["losses"])
            floor = np.asarray(runs["torch float64"]["losses"])
            for name, run in runs.items():
                if name == "torch float32":
                    continue
                losses = np.asarray(run["losses"])
                difference = np.abs(losses - reference) / reference
                run.update(max_relative_difference=float(difference.max()),
                           mean_relative_difference=float(difference.mean()),
                           max_relative_difference_to_float64=float(
                               np.max(np.abs(losses - floor) / floor)),
                           relative_difference=difference.tolist())
                print(f"[train_parity] {key} {name}: largest relative difference to torch "
                      f"float32 {difference.max():.2e} (mean {difference.mean():.2e}), to torch "
                      f"float64 {run['max_relative_difference_to_float64']:.2e}; loss "
                      f"{losses[0]:.4f} -> {losses[-1]:.4f}")
            results["runs"][key] = {
                "model": dataclasses.asdict(model), "train": dataclasses.asdict(train),
                "runs": runs,
                "float32_within_bound": all(runs[n]["max_relative_difference"] <= F32_BOUND
                                            for n in runs if n.startswith("ours float32"))}
            steps = np.arange(1, _STEPS.value + 1)
            curve_panels[key] = {name: (steps, run["losses"]) for name, run in runs.items()}
            difference_panels[key] = {
                name: (steps, np.maximum(run["relative_difference"], 1e-12))
                for name, run in runs.items() if name != "torch float32"}

    output = pathlib.Path(_OUTPUT.value)
    output.parent.mkdir(parents=True, exist_ok=True)
    styles = {"torch float32": "k-", "torch float64": "C7-.", "ours float32": "C0--",
              f"ours float32, {_MICRO.value} micro-batches": "C1:",
              "ours bfloat16 compute": "C3-"}
    plots.line_plot(str(output.with_suffix(".png")), {}, panels=curve_panels, styles=styles,
                    title="Training loss: ours vs Hugging Face torch (same weights, batches, AdamW)",
                    xlabel="step", ylabel="loss", size=(4.8, 3.6))
    plots.line_plot(str(output.with_name(output.stem + "_difference.png")), {},
                    panels=difference_panels, styles=styles, log_y=True,
                    title="|run - torch float32| / torch float32, per step", xlabel="step",
                    ylabel="relative difference", size=(4.8, 3.6))
    output.write_text(json.dumps(results, indent=1))
    print(f"[train_parity] wrote {output} and its plots")


if __name__ == "__main__":
    app.run(main)
