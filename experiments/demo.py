"""The end-to-end demo on the embedded `shapes` data set (the README's first command).

    python -m cm3leon_jax.demo --workdir /tmp/cm3leon_demo

Runs every stage at its tiny setting (`experiments/pretrain_tiny.py` + `sft_tiny.py`): build
`shapes`, train the tokenizers (VQ-GAN + sentencepiece), train the retrieval bi-encoder and build
its index and neighbour tables, prepare the token shards (Beam) with their data card, pretrain with
the CM3 objective, instruction-tune, and evaluate the tuned model on `demo.eval_examples` test
examples (text-to-image, captioning, VQA, editing; a real-vs-generated grid). It writes pictures to
`<workdir>/demo/` and every stage's figures to `<workdir>/metrics.json`. Training lengths:
`--config.demo.pretrain_train.steps` and `--config.demo.sft_train.steps`;
`--config.demo.stages='("data", "tokenizers")'` runs a prefix.

Measured on the 2-core CPU machine: see docs/BENCHMARKS.md ("End-to-end demo").
"""


import ml_collections

from cm3leon_jax import experiment_files


def get_config(arg=None):
    del arg
    cfg = experiment_files.config(__file__, "sft_tiny")
    cfg.demo = ml_collections.ConfigDict(dict(
        grid_examples=16,
        stages=("data", "tokenizers", "retrieval", "prepare", "pretrain", "sft", "evaluate"),
        eval_examples=16,
        pretrain_train=experiment_files.config(__file__, "pretrain_tiny").train, sft_train=cfg.train))
    return cfg
