"""The CPU quality run on `shapes`: the quality VQ-GAN and a bigger decoder than `pretrain_tiny`.

The whole chain (one config for every stage, as `pretrain_tiny.py`; W=/tmp/small):

    C=experiments/pretrain_shapes_small.py
    python -m cm3leon_jax.tokenizers.train_all --config $C --workdir $W    # vqgan_shapes: ~24 min
    python -m cm3leon_jax.retrieval.train_encoder --config $C --workdir $W
    python -m cm3leon_jax.retrieval.build_index --config $C --workdir $W
    python -m cm3leon_jax.retrieval.neighbours --config $C --workdir $W
    python -m cm3leon_jax.data.prepare --config $C --workdir $W
    python -m cm3leon_jax.pretrain --config $C --workdir $W
    python -m cm3leon_jax.sft --config experiments/sft_shapes_small.py --workdir $W
    python -m cm3leon_jax.evaluate --workdir $W --table --results_md docs/RESULTS.md

Data, text tokenizer, retrieval and prepare: `pretrain_tiny`'s. Image tokenizer:
`experiments/vqgan_shapes.py` (33.3 dB, 85% verifier exact-match on reconstructions: the ceiling of
every text-to-image figure), not the minute-scale one (24 dB, 5.5%).

Model: cm3leon preset, 6 layers, d_model 256, 4 heads of 64, seq_len 384 (as tiny), vocabulary
1,152, ~37 MFLOP per trained token against tiny's ~8 (983,040 parameters).
Parameters: 5,111,808 (exact; jax.eval_shape via `python -m cm3leon_jax.plan --config
experiments/pretrain_shapes_small.py`).
Training: batch 8 x 384 tokens, 700 steps (2.15M tokens), LR 2e-3, 50 warmup steps, cosine to 10%;
eval every 175 steps with a grid of 4 validation captions x 2 text-to-image samples written to
TensorBoard (`config.samples`).
Measured (session 2, the 2-core CPU machine shared with other jobs, load 3-7): pretraining 29.6
min (1,776 s with start-up; 1,050-2,000 tok/s), validation loss 3.49 with retrieved documents and
3.82 without at step 700; the whole chain above, with the VQ-GAN reused from its own run, took
about 75 min. Evaluation after `sft_shapes_small` (docs/RESULTS.md): text-to-image exact match
0.00 (tokenizer ceiling 0.80), captioning attributes 0.39, VQA 0.375, editing 0.00: far below
the quality targets; the model needs many times these steps.
"""

import ml_collections

from cm3leon_jax import experiment_files


def get_config(arg=None):
    cfg = experiment_files.config(__file__, "pretrain_tiny", arg)
    tokenizers = experiment_files.config(__file__, "vqgan_shapes")  # the quality image tokenizer
    cfg.vqgan, cfg.vqgan_train = tokenizers.vqgan, tokenizers.vqgan_train
    cfg.model = ml_collections.ConfigDict(dict(
        preset="cm3leon", vocab_size=1152, num_layers=6, d_model=256, num_heads=4,
        max_seq_len=384, dtype="float32", remat="none"))
    cfg.train = ml_collections.ConfigDict(dict(
        steps=700, batch_size=8, lr=2e-3, warmup_steps=50, decay="cosine", weight_decay=0.1,
        log_every=25, eval_every=175, eval_batches=4, checkpoint_every=175))
    cfg.samples = ml_collections.ConfigDict(dict(num_captions=4, num_samples=2, scale=4))
    return cfg
