"""Token-space super-resolution on `shapes`: 32x32 (8x8 base codes) -> 64x64 (16x16 codes).

    python -m cm3leon_jax.tokenizers.train_vqgan --config experiments/vqgan_shapes_64.py \
        --workdir W/tokenizers_hr --config.vqgan_train.init_from=<the base VQ-GAN>
    python -m cm3leon_jax.superres --config experiments/superres_shapes.py --workdir W

W holds the base project's vocabulary (W/prepared/manifest.json's, else W/tokenizers/vocab or
W/vocab; or `--config.superres.vocab_dir`), whose VQ-GAN is the low-res tokenizer, and the high-res
VQ-GAN in W/tokenizers_hr (or `--config.superres.high_tokenizer`). The upsampler is the project's
decoder (chameleon preset: RoPE, so the fixed distance between a high code and the low code under it
is easy to find) with a smaller config than the base model: 4 layers, d_model 128, 4 heads;
vocabulary = the base layout (22 special + 512 text + 512 low codes) + 512 high codes = 1,558 ids,
padded to 1,664; rows of 518 tokens (`<boi>` 256 aligned low codes `<eoi> <break> <boi>` 256 high
codes `<eoi> <eos>`), padded to 520. Captions are off by default
(`--config.superres.use_caption=True` turns them on; the low-res codes already show the whole
scene on `shapes`). 8,000 training scenes.

Measured on the 2-core CPU (alone), with the 12k-step vqgan_shapes tokenizer as the low-res one
and vqgan_shapes_64 (12k steps from it, 32.8 dB) as the high-res one: 2,000 steps in 1,014 s
(8,000-8,800 tok/s); validation loss 2.53 nats/code; test (200 images, greedy): PSNR 21.62 dB,
SSIM 0.778, verifier 11%, code accuracy 17%. Resumed to 5,000 steps (`--config.train.steps=5000`,
2,458 s beside other jobs): 22.99 dB, SSIM 0.837, verifier 14.5%, validation loss 1.96. Bicubic
scores 28.62 dB / 0.927 / 98.5%. TARGET MISSED: objects land in the right cell with the right
colour but with wrong outlines; the loss is still falling. See docs/RESULTS.md, "Super-resolution".
"""

import ml_collections


def get_config(arg=None):
    del arg
    cfg = ml_collections.ConfigDict()
    # The base resolution; the high resolution is the high-res VQ-GAN's image size.
    cfg.data = ml_collections.ConfigDict(dict(
        source="shapes", image_size=32, num_train=8000, num_validation=200, num_test=200, seed=0))
    cfg.superres = ml_collections.ConfigDict(dict(
        low_tokenizer="", high_tokenizer="", vocab_dir="", use_caption=False,
        caption_dropout=0.2, max_caption_tokens=48, seq_len=0, encode_batch_size=100,
        eval_split="test", eval_images=0, eval_batch_size=50, eval_temperature=0.0,
        grid_images=8))
    cfg.model = ml_collections.ConfigDict(dict(
        preset="chameleon", vocab_size=1664, num_layers=4, d_model=128, num_heads=4,
        max_seq_len=576, dtype="float32", remat="none"))
    cfg.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    cfg.train = ml_collections.ConfigDict(dict(
        steps=2000, batch_size=8, lr=3e-3, warmup_steps=30, decay="cosine", weight_decay=0.1,
        log_every=25, eval_every=500, eval_batches=4, checkpoint_every=500))
    return cfg
