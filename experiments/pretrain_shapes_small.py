"""The CPU quality run on `shapes`: a bigger decoder than `pretrain_tiny`, ~40 minutes on 2 cores.

    python -m cm3leon_jax.pretrain --config experiments/pretrain_shapes_small.py --workdir W

W must hold the tiny project's prepared data (this file keeps `pretrain_tiny`'s data, tokenizer,
retrieval and prepare sections, so `python -m cm3leon_jax.demo --workdir W` or the tiny chain's
prepare step serves both); only the model and training differ, and the run directory is W/pretrain
(use a copy of W to keep the tiny run's checkpoints).

Model: cm3leon preset, 6 layers, d_model 256, 4 heads of 64, seq_len 384 (as tiny), vocabulary
1,152, ~37 MFLOP per trained token against tiny's ~8 (983,040 parameters).
Parameters: 5,111,808 (exact; jax.eval_shape via `python -m cm3leon_jax.plan --config
experiments/pretrain_shapes_small.py`).
Training: batch 8 x 384 tokens, 700 steps (2.15M tokens), LR 2e-3, 50 warmup steps, cosine to 10%;
eval every 175 steps with a grid of 4 validation captions x 2 text-to-image samples written to
TensorBoard (`config.samples`).
Wall time, estimated (not yet run in full): the smoke run (--config.train.steps=5, on the 2-core
machine shared with other jobs, load ~10) trained at ~940 tok/s (MFU ~60% of the measured matmul
peak), so 700 steps take ~38 min, plus under a minute per eval for losses and samples, and ~1 min
of start-up and compilation: ~40 min, within the hour.
"""

import importlib.util
import pathlib

import ml_collections


def get_config(arg=None):
    spec = importlib.util.spec_from_file_location(
        "pretrain_tiny", pathlib.Path(__file__).with_name("pretrain_tiny.py"))
    base = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(base)
    cfg = base.get_config(arg)
    cfg.model = ml_collections.ConfigDict(dict(
        preset="cm3leon", vocab_size=1152, num_layers=6, d_model=256, num_heads=4,
        max_seq_len=384, dtype="float32", remat="none"))
    cfg.train = ml_collections.ConfigDict(dict(
        steps=700, batch_size=8, lr=2e-3, warmup_steps=50, decay="cosine", weight_decay=0.1,
        log_every=25, eval_every=175, eval_batches=4, checkpoint_every=175))
    cfg.samples = ml_collections.ConfigDict(dict(num_captions=4, num_samples=2, scale=4))
    return cfg
