"""The whole chain on your own images: a folder, a tfds data set or WebDataset shards.

    python -m cm3leon_jax.demo --config experiments/user_data.py --workdir W \
        --config.data.folder=my_data

`my_data` holds `captions.jsonl` (one `{"image": "a.jpg", "caption": "..."}` per line) and the
images (README, "User data"). The same config serves every stage command of the README's
stage-by-stage list (`C=experiments/user_data.py`, with the same `--config.data.*` overrides).
Other sources: `--config.data.source=tfds --config.data.tfds_name=NAME` (with `image_key` /
`caption_key`) or `--config.data.source=webdataset --config.data.webdataset='shards/*.tar'`.

Defaults chosen for a few thousand real photographs on a CPU (minutes per stage); every size
follows `data.image_size` (the VQ-GAN's input is tied to it) and scales by overrides:
* images 64x64, VQ-GAN with 8x downsampling (an 8x8 code grid, 64 tokens per image as the paper's
  256 px -> 32x32 at 1/16 of the pixels), 1,024 codes, global encoder (natural images have no
  flat background for a local one to code cheaply), plain L2 + commitment, 3,000 steps;
* a sentencepiece BPE of 1,024 pieces (real captions use many more words than `shapes`);
* a 2-layer CLIP-style bi-encoder (400 steps), k=2 retrieved documents from 256 candidates;
* the Chameleon preset, d_model 192, 4 layers, rows of 512 tokens (a query and two retrieved
  image-caption documents fit); 600 pretraining + 600 SFT steps (text-to-image and captioning;
  VQA and editing only where the data carries question/answer or edit pairs, `sft.py` says
  which);
* evaluation on 32 test images without a verifier: tokenizer PSNR / SSIM, FID (the bi-encoder's
  image features, with the real-vs-real noise level), CLIP score, CIDEr-D against the data's own
  captions, retrieval recall (images sharing a caption count as right answers for each other).

Measured: not yet at this size. No real image set may be downloaded here, and this session's CPU
went to the level-3 quality run; tests/integration/test_user_data.py runs this config's chain as the
README writes it, at 32 px for a few steps, on photo-like generated pictures (`python
tests/user_folder.py OUT COUNT` makes a folder of them): that proves the path, not the quality. On
real photographs expect the tokenizer's PSNR to bound everything else, and raise `data.image_size`
(128-256) with `vqgan.*` and the steps on an accelerator.
"""

import ml_collections

from cm3leon_jax import experiment_files


def get_config(arg=None):
    del arg
    cfg = experiment_files.config(__file__, "demo")
    size = ml_collections.FieldReference(64)
    cfg.data.update(source="folder", folder="", image_size=size, validation_fraction=0.05,
                    test_fraction=0.05)
    cfg.vqgan.update(image_size=size, downsample_factor=8, channels=32,
                     channel_multipliers=(1, 2, 2, 4), norm_groups=8, codebook_size=1024,
                     encoder_context="global", edge_weight=0.0, mid_attention=False)
    cfg.vqgan_train.update(num_steps=3000, log_every=250, image_every=1000,
                           checkpoint_every=1000)
    cfg.text_tokenizer = ml_collections.ConfigDict(dict(vocab_size=1024))
    cfg.retrieval.update(num_candidates=256, text_max_length=128, train_steps=400,
                         checkpoint_every=400)
    cfg.cm3.update(seq_len=512)
    cfg.model.update(vocab_size=2176, d_model=192, num_heads=6, max_seq_len=512)
    cfg.sft = ml_collections.ConfigDict(dict(text_to_image=1.0, captioning=1.0, vqa=1.0,
                                             editing=0.5, grounded_generation=0.0))
    cfg.demo.pretrain_train.update(steps=600, warmup_steps=40, eval_every=200,
                                   checkpoint_every=200)
    cfg.demo.sft_train.update(steps=600, warmup_steps=40, eval_every=200, checkpoint_every=200)
    cfg.train = cfg.demo.sft_train
    cfg.demo.eval_examples = 32
    cfg.demo.top_p = 0.9
    return cfg
