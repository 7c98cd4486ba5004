"""The end-to-end demo on the embedded `shapes` data set (the README's first command).

    python -m cm3leon_jax.demo --workdir /tmp/cm3leon_demo
    python -m cm3leon_jax.demo --config experiments/demo.py:level3 --workdir W   # harder data

The argument is the `shapes` level (data/sources/shapes/levels.py): level1 (the default: one object
on a plain background, 432 object layouts), level2 or level3. Runs every stage at its tiny setting
(`experiments/pretrain_tiny.py` + `sft_tiny.py` at that level): build `shapes`, train the
tokenizers (VQ-GAN with a local encoder and edge-weighted loss, 2,700 steps, + sentencepiece),
train the retrieval bi-encoder (250 steps) and build its index and neighbour tables, prepare the
token shards (Beam) with their data card,
pretrain with the CM3 objective (100 steps), instruction-tune (500 steps), and evaluate the tuned
model on `demo.eval_examples` (64) test examples: text-to-image, captioning, VQA and editing, with
the grids `<workdir>/demo/text2image.png` (real next to generated), `captions.png` (each image
with the caption the model wrote) and `edits.png`, and some captions and VQA answers printed;
then the super-resolution stage: a 64-px VQ-GAN fine-tuned from the base one on 32-px crops
(`vqgan_shapes_64`, 100 steps), an upsampler (`superres_shapes`, 60 steps) and an upscaled
text-to-image grid (`<workdir>/demo/upscaled.png`). Every stage's figures go to
`<workdir>/metrics.json`. Training lengths: `--config.demo.pretrain_train.steps` and
`--config.demo.sft_train.steps`; `--config.demo.stages='("data", "tokenizers")'` runs a prefix.

Measured on the 2-core CPU machine, level 1: 756 s wall from an empty workdir and compilation
cache; the tuned model captions 64 test scenes with colour 0.89 / position 0.81 / shape 0.36
right, answers VQA 0.63, and its text-to-image reaches verifier exact 0.08, attributes 0.40
(docs/BENCHMARKS.md, "End-to-end demo", for the time per stage; docs/RESULTS.md, "A model that
does its tasks", for what the model does, why, and the pictures).
"""


import ml_collections

from cm3leon_jax import experiment_files


def get_config(arg=None):
    """arg: the `shapes` level (`level1`, the default, .. `level3`; data/sources/shapes/levels.py)."""
    cfg = experiment_files.config(__file__, "sft_tiny", arg)
    cfg.demo = ml_collections.ConfigDict(dict(
        grid_examples=16,
        stages=("data", "tokenizers", "retrieval", "prepare", "pretrain", "sft", "evaluate",
                "superres"),
        eval_examples=64,
        # Image tokens are sampled from the top 30% of the probability mass (with CFG 3): on the
        # demo's model text-to-image attributes 0.40 against 0.36 at the paper's 0.9.
        top_p=0.3,
        pretrain_train=experiment_files.config(__file__, "pretrain_tiny", arg).train,
        sft_train=cfg.train, superres=superres_stage()))
    return cfg


def superres_stage() -> ml_collections.ConfigDict:
    """The demo's super-resolution settings: minute-scale versions of the quality configs.

    Only what is the stage's own lives here: the data and VQ-GAN architecture follow the demo's
    (`config.data`, `config.vqgan`) at run time, at twice the image size (cm3leon_jax/demo.py).
    """
    high_train = experiment_files.config(__file__, "vqgan_shapes_64").vqgan_train
    high_train.update(num_steps=100, warmup_steps=10, learning_rate=1e-3, log_every=50,
                      image_every=100, checkpoint_every=100)
    upsampler = experiment_files.config(__file__, "superres_shapes")
    del upsampler.data
    upsampler.superres.update(eval_images=8, eval_batch_size=8, grid_images=4)
    upsampler.train.update(steps=60, warmup_steps=10, eval_every=60, checkpoint_every=60)
    return ml_collections.ConfigDict(dict(high_tokenizer_train=high_train, upsampler=upsampler,
                                          grid_captions=2))
