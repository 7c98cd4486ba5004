"""Minute-scale VQ-GAN on `shapes` for the demo and quick checks: vqgan_shapes.py's model, trained
for 800 steps (the PatchGAN on for the last 100, so the demo runs the whole VQ-GAN) instead of
12,000.

    python -m cm3leon_jax.tokenizers.train_vqgan --config experiments/vqgan_tiny.py --workdir W
    python -m cm3leon_jax.tokenizers.train_all --config experiments/vqgan_tiny.py --workdir W

The second also trains the sentencepiece tokenizer and writes the vocabulary
(`cm3leon_jax.tokenizers.train_all.train_tokenizers`, the demo's tokenizer stage). Measured with
train_all on the 2-core CPU machine (load 1.4): 91 s wall for both tokenizers and the vocabulary;
test PSNR 24.0 dB, codebook usage 99.8%, verifier exact-match 5.5% (shapes are blurry blobs in
the right place and colour, see `<workdir>/tokenizers/reconstructions.png`); 512 text pieces.
The quality targets are vqgan_shapes.py's.
"""

from cm3leon_jax import experiment_files


def get_config(arg=None):
    cfg = experiment_files.config(__file__, "vqgan_shapes", arg)
    # The GAN runs for the last 100 steps (weight 0.1), so the demo exercises the whole VQ-GAN.
    cfg.vqgan.update(discriminator_start=700, discriminator_weight=0.1)
    cfg.vqgan_train.update(num_steps=800, warmup_steps=50, log_every=50, image_every=400,
                           checkpoint_every=400)
    return cfg
