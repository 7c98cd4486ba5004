"""High-resolution VQ-GAN for the super-resolution stage: `shapes` at 64x64 -> 16x16 codes.

    nice -n 5 python -m cm3leon_jax.tokenizers.train_vqgan \
        --config experiments/vqgan_shapes_64.py --workdir W/tokenizers_hr \
        --config.vqgan_train.init_from=<the 32-px vqgan_shapes workdir>

The base tokenizer (experiments/vqgan_shapes.py) reads 32x32 images into 8x8 codes; this one reads
the same scenes rendered at 64x64 (`data.image_size=64`: the shapes renderer draws any size from
the same scene, so both data sets hold the same scenes under the same ids) into 16x16 codes with
the same architecture and choices (EMA codebook with L2 lookup, code dimension 8, L2 loss, GAN
off). Two things make it cheap: it starts from the base tokenizer's weights
(`vqgan_train.init_from`; the base model alone already reads 64-px images at 28.0 dB / verifier
98%), and it trains on random 32x32 crops (`vqgan_train.crop_size`), so a step costs what a 32-px
step costs (the VQ-GAN is convolutional; its one attention block has no positions) while the
export encodes whole 64-px images. The upsampler (experiments/superres_shapes.py) generates these
codes from the base tokenizer's.

Measured on the 2-core shared CPU (load 2-4, a second training job beside it): 12,000 steps in
17.5 min (1,050 s in the loop, 10-15 steps/s) from the 12k-step vqgan_shapes export; test split
(200 images): PSNR 32.80 dB, codebook usage 100% (perplexity 348), verifier exact-match on
reconstructions 100%. Validation PSNR by step: 30.2 (2k), 31.3 (4k), 32.1 (6k), 32.6 (8k), 33.7
(10k), 33.4 (12k). A 3,000-step run of the same recipe: 31.22 dB / 100% in 198 s. The first
recipe (random initialisation, whole 64-px images, 0.6-0.8 s/step) reached 28.92 dB / 89% after
1,500 steps in 19 min. Bicubic 32->64 of the true low-res rendering scores 28.62 dB.
"""

from cm3leon_jax import experiment_files


def get_config(arg=None):
    cfg = experiment_files.config(__file__, "vqgan_shapes", arg)
    del cfg.text_tokenizer, cfg.vocab  # the base vocabulary has the text side
    cfg.data.image_size = cfg.vqgan.image_size = 64
    cfg.vqgan.discriminator_start = 100000
    cfg.vqgan_train.update(num_steps=12000, warmup_steps=50, learning_rate=1e-3, crop_size=32,
                           log_every=500, image_every=2000, checkpoint_every=2000)
    return cfg
