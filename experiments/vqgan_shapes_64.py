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

import ml_collections


def get_config(arg=None):
    del arg
    cfg = ml_collections.ConfigDict()
    cfg.data = ml_collections.ConfigDict(dict(
        source="shapes", image_size=64, num_train=2000, num_validation=200, num_test=200, seed=0))
    cfg.vqgan = ml_collections.ConfigDict(dict(
        image_size=64, downsample_factor=4, channels=16, channel_multipliers=(1, 2, 4),
        num_res_blocks=1, attention_resolutions=(), mid_attention=True, norm_groups=8,
        codebook_size=512, code_dim=8, codebook_lookup="l2", codebook_update="ema",
        ema_decay=0.99, commitment_cost=0.25, restart_unused_after=20,
        restart_sampling="uniform", reconstruction_loss="l2", discriminator_start=100000,
        discriminator_weight=0.0, discriminator_channels=16, discriminator_layers=2))
    cfg.vqgan_train = ml_collections.ConfigDict(dict(
        num_steps=1500, batch_size=8, learning_rate=2e-3, warmup_steps=50,
        final_learning_rate_fraction=0.05, adam_b1=0.9, adam_b2=0.99,
        discriminator_learning_rate=2e-4, log_every=50, image_every=500, checkpoint_every=250,
        eval_batch_size=100, seed=0))
    return cfg
