"""Instruction tuning of the CPU quality run (`pretrain_shapes_small`), from its checkpoint.

    python -m cm3leon_jax.sft --config experiments/sft_shapes_small.py --workdir W

W is `pretrain_shapes_small.py`'s workdir (the chain is in that file's docstring). Starts from
W/pretrain (params only) and trains on `sft_tiny`'s task mixture (text-to-image, captioning, VQA,
editing, grounded generation; prompt masked out of the loss): 600 steps of batch 8 x 384, LR 1e-3,
40 warmup steps, cosine to 10%, per-task eval loss every 150 steps. Measured (session 2, 2-core
CPU, shared): 16.5 min; eval loss at step 600: captioning 0.72, VQA 0.45, editing 3.27,
text-to-image 3.97, grounded generation 4.17; evaluation in docs/RESULTS.md (VQA 0.375).
"""

import ml_collections

from cm3leon_jax import experiment_files


def get_config(arg=None):
    del arg
    cfg = experiment_files.config(__file__, "pretrain_shapes_small")
    cfg.sft = experiment_files.config(__file__, "sft_tiny").sft
    cfg.train = ml_collections.ConfigDict(dict(
        steps=600, batch_size=8, lr=1e-3, warmup_steps=40, decay="cosine", weight_decay=0.1,
        log_every=25, eval_every=150, eval_batches=4, checkpoint_every=150))
    return cfg
