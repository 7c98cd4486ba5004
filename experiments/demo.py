"""The end-to-end demo on the embedded `shapes` data set (the README's first command).

    python -m cm3leon_jax.demo --workdir /tmp/cm3leon_demo

Runs every stage at its tiny setting (`experiments/pretrain_tiny.py` + `sft_tiny.py`): build
`shapes`, train the tokenizers (VQ-GAN + sentencepiece), train the retrieval bi-encoder and build
its index and neighbour tables, prepare the token shards (Beam) with their data card, pretrain with
the CM3 objective, instruction-tune, and evaluate the tuned model on `demo.eval_examples` test
examples (text-to-image, captioning, VQA, editing; a real-vs-generated grid), then the
super-resolution stage: a 64-px VQ-GAN fine-tuned from the base one on 32-px crops
(`vqgan_shapes_64`, 400 steps), an upsampler (`superres_shapes`, 150 steps) and an upscaled
text-to-image grid (`<workdir>/demo/upscaled.png`). It writes pictures to
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
        stages=("data", "tokenizers", "retrieval", "prepare", "pretrain", "sft", "evaluate",
                "superres"),
        eval_examples=16,
        pretrain_train=experiment_files.config(__file__, "pretrain_tiny").train, sft_train=cfg.train,
        superres=superres_stage()))
    return cfg


def superres_stage() -> ml_collections.ConfigDict:
    """The demo's super-resolution settings: minute-scale versions of the quality configs.

    Only what is the stage's own lives here: the data and VQ-GAN architecture follow the demo's
    (`config.data`, `config.vqgan`) at run time, at twice the image size (cm3leon_jax/demo.py).
    """
    high_train = experiment_files.config(__file__, "vqgan_shapes_64").vqgan_train
    high_train.update(num_steps=400, warmup_steps=20, learning_rate=1e-3, log_every=100,
                      image_every=400, checkpoint_every=400)
    upsampler = experiment_files.config(__file__, "superres_shapes")
    del upsampler.data
    upsampler.superres.update(eval_images=32, eval_batch_size=32, grid_images=4)
    upsampler.train.update(steps=150, eval_every=75, checkpoint_every=75)
    return ml_collections.ConfigDict(dict(high_tokenizer_train=high_train, upsampler=upsampler,
                                          grid_captions=4))
