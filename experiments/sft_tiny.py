"""Tiny instruction tuning on `shapes` (CPU, minutes), from `pretrain_tiny`'s checkpoint.

    python -m cm3leon_jax.sft --config experiments/sft_tiny.py --workdir W

The argument is the `shapes` level, as for pretrain_tiny (default level1). Starts from W/pretrain
(params only), trains on the task mixture of `config.sft` with the prompt masked out of the loss,
evaluates the loss per task on the validation split. LR 3e-3 with 30 warmup steps (the paper's
5e-5 / 150 is for a 7B model on ~30B tokens; a 4-layer model on minutes of CPU needs a larger
step: 3e-3 beat 1e-3 on every task, docs/RESULTS.md). The mixture leans on text-to-image, leaves
out grounded generation (every `shapes` caption already names its positions, so it duplicates
text-to-image) and gives editing, the slowest task to learn, half a share.
"""

import ml_collections

from cm3leon_jax import experiment_files


def get_config(arg=None):
    cfg = experiment_files.config(__file__, "pretrain_tiny", arg)
    cfg.sft = ml_collections.ConfigDict(dict(text_to_image=1.5, captioning=1.0, vqa=1.0,
                                             editing=0.5, grounded_generation=0.0))
    cfg.train = ml_collections.ConfigDict(dict(
        steps=500, batch_size=8, lr=3e-3, warmup_steps=30, decay="cosine", weight_decay=0.1,
        log_every=50, eval_every=500, eval_batches=2, checkpoint_every=250))
    return cfg
