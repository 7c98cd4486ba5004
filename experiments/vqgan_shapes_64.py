"""High-resolution VQ-GAN for the super-resolution stage: `shapes` at 64x64 -> 16x16 codes.

    nice -n 10 python -m cm3leon_jax.tokenizers.train_vqgan \
        --config experiments/vqgan_shapes_64.py --workdir /tmp/sr/vqgan64

The base tokenizer (experiments/vqgan_shapes.py) reads 32x32 images into 8x8 codes; this one reads
the same scenes rendered at 64x64 (`data.image_size=64`: the shapes renderer draws any size from
the same scene, so both data sets hold the same scenes under the same ids) into 16x16 codes with
the same downsampling factor 4 and the same choices (EMA codebook with L2 lookup, code dimension
8, L2 loss, GAN off) that vqgan_shapes.py measured best. The upsampler
(experiments/superres_shapes.py) generates these codes from the base tokenizer's.

Measured on the 2-core shared CPU (nice 10, 0.6-0.8 s/step): 1,500 steps in 19 min wall; test
split (200 images): PSNR 28.92 dB, codebook usage 100% (perplexity 341), verifier exact-match on
reconstructions 89%. Bicubic 32->64 of the true low-res rendering scores 28.62 dB, so this
tokenizer's reconstructions limit any token-space upsampler to about bicubic PSNR. Train longer
(the 32-px tokenizer gained ~4 dB from 1.5k to 12k steps) before expecting the upsampler to beat it.
"""

from cm3leon_jax import experiment_files


def get_config(arg=None):
    cfg = experiment_files.config(__file__, "vqgan_shapes", arg)
    del cfg.text_tokenizer, cfg.vocab  # the base vocabulary has the text side
    cfg.data.image_size = cfg.vqgan.image_size = 64
    cfg.vqgan.discriminator_start = 100000
    cfg.vqgan_train.update(num_steps=1500, warmup_steps=50, log_every=50, image_every=500,
                           checkpoint_every=250)
    return cfg
