"""Instruction tuning of the level-3 quality run (`pretrain_shapes_small`), from its checkpoint.

    python -m cm3leon_jax.sft --config experiments/sft_shapes_small.py --workdir W

W is `pretrain_shapes_small.py`'s workdir (the chain is in that file's docstring). Starts from
W/pretrain (params only) and trains on `sft_tiny`'s task mixture (text-to-image 1.5, captioning 1,
VQA 1, editing 0.5; prompt masked out of the loss): 1,500 steps of batch 8 x 384, LR 3e-3 (the
demo measured 3e-3 above 1e-3 on every task), 60 warmup steps, cosine to 10%; per-task eval loss
and 16 verifier-judged text-to-image samples every 500 steps.
Measured on the 2-core CPU machine (session 6): 17.9 min; eval loss at step 1,500: text-to-image
1.99, captioning 0.42, VQA 0.38, editing 1.68 (all still falling from step 1,000); on 64 test
scenes captioning attributes 0.80 (98% distinct), VQA 0.53, text-to-image exact 0.00 /
attributes 0.32, editing exact 0.02 / attributes 0.40 (copy 0.76). docs/RESULTS.md, "The
level-3 quality run".
"""

import ml_collections

from cm3leon_jax import experiment_files


def get_config(arg=None):
    del arg
    cfg = experiment_files.config(__file__, "pretrain_shapes_small")
    cfg.sft = experiment_files.config(__file__, "sft_tiny").sft
    # The tuned model's samples under guidance, as `evaluate` and the demo decode (CFG 3, top-p
    # 0.3): without guidance the pretrained model's low-temperature samples were background only.
    cfg.samples.update(cfg_scale=3.0)
    cfg.train = ml_collections.ConfigDict(dict(
        steps=1500, batch_size=8, lr=3e-3, warmup_steps=60, decay="cosine", weight_decay=0.1,
        log_every=50, eval_every=500, eval_batches=4, checkpoint_every=500))
    return cfg
