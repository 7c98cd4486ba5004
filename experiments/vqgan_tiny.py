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

import ml_collections


def get_config(arg=None):
    del arg
    cfg = ml_collections.ConfigDict()
    cfg.data = ml_collections.ConfigDict(dict(
        source="shapes", image_size=32, num_train=2000, num_validation=200, num_test=200, seed=0))
    cfg.vqgan = ml_collections.ConfigDict(dict(
        image_size=32, downsample_factor=4, channels=16, channel_multipliers=(1, 2, 4),
        num_res_blocks=1, attention_resolutions=(), mid_attention=True, norm_groups=8,
        codebook_size=512, code_dim=8, codebook_lookup="l2", codebook_update="ema",
        ema_decay=0.99, commitment_cost=0.25, restart_unused_after=20,
        restart_sampling="uniform", reconstruction_loss="l2", discriminator_start=700,
        discriminator_weight=0.1, discriminator_channels=16, discriminator_layers=2))
    cfg.vqgan_train = ml_collections.ConfigDict(dict(
        num_steps=800, batch_size=8, learning_rate=2e-3, warmup_steps=50,
        final_learning_rate_fraction=0.05, adam_b1=0.9, adam_b2=0.99,
        discriminator_learning_rate=2e-4, log_every=50, image_every=400, checkpoint_every=400,
        eval_batch_size=100, seed=0))
    cfg.text_tokenizer = ml_collections.ConfigDict(dict(vocab_size=512))
    cfg.vocab = ml_collections.ConfigDict(dict(num_mask_sentinels=16, pad_to_multiple=128))
    return cfg
