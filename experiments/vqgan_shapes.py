"""VQ-GAN image tokenizer on `shapes` (32x32 images -> 8x8 codes, codebook 512).

    nice -n 5 python -m cm3leon_jax.tokenizers.train_vqgan \
        --config experiments/vqgan_shapes.py --workdir /tmp/vqgan_shapes

Targets (test split, decode(encode(image))): verifier exact-match >= 98%, PSNR >= 28 dB, codebook
usage >= 50%.

Measured on the 2-core CPU machine (shared, load ~7; one JAX device): the run went to 8,000 steps
(`--config.vqgan_train.num_steps=8000`, 15 min 53 s wall) and was then resumed from that
checkpoint to 12,000 steps (this file, 7 min 52 s wall): 23 min 45 s in all. Test split, 200
images: PSNR 33.32 dB, codebook usage 100% (512/512 codes, perplexity 414), verifier exact-match
85.0% (target 98%: missed; failures are shape detail, mostly crosses whose inner corners round off
into circles); 31.83 dB / 100% / 82.5% at 8,000 steps. The choices (EMA codebook with L2 lookup,
code dimension 8, L2 loss, batch 8, GAN off) were measured against the alternatives:
docs/BENCHMARKS.md, "VQ-GAN on shapes".
"""

import ml_collections

from cm3leon_jax.data.sources.shapes import levels


def get_config(arg=None):
    """arg: the `shapes` level (`level1`..`level3`, data/sources/shapes/levels.py); default level 3."""
    cfg = ml_collections.ConfigDict()
    cfg.data = levels.apply(ml_collections.ConfigDict(dict(
        source="shapes", image_size=32, num_train=2000, num_validation=200, num_test=200,
        seed=0)), arg, default=3)
    cfg.vqgan = ml_collections.ConfigDict(dict(
        image_size=32, downsample_factor=4, channels=16, channel_multipliers=(1, 2, 4),
        num_res_blocks=1, attention_resolutions=(), mid_attention=True, norm_groups=8,
        codebook_size=512, code_dim=8, codebook_lookup="l2", codebook_update="ema",
        ema_decay=0.99, commitment_cost=0.25, restart_unused_after=20,
        restart_sampling="uniform", reconstruction_loss="l2", discriminator_start=7000,
        discriminator_weight=0.0, discriminator_channels=16, discriminator_layers=2))
    cfg.vqgan_train = ml_collections.ConfigDict(dict(
        num_steps=12000, batch_size=8, learning_rate=2e-3, warmup_steps=100,
        final_learning_rate_fraction=0.05, adam_b1=0.9, adam_b2=0.99,
        discriminator_learning_rate=2e-4, log_every=100, image_every=1000, checkpoint_every=1000,
        eval_batch_size=100, seed=0, crop_size=0, init_from=""))
    cfg.text_tokenizer = ml_collections.ConfigDict(dict(vocab_size=512))
    cfg.vocab = ml_collections.ConfigDict(dict(num_mask_sentinels=16, pad_to_multiple=128))
    return cfg
