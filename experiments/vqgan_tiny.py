"""Minute-scale VQ-GAN on `shapes` for the demo and quick checks: vqgan_shapes.py's model with a
local encoder (`vqgan.encoder_context="local"`) and edges weighted in the loss, trained 2,700 steps
instead of 12,000 (no GAN: vqgan_shapes.py measured it no help on these images).

    python -m cm3leon_jax.tokenizers.train_vqgan --config experiments/vqgan_tiny.py:level1 --workdir
    W python -m cm3leon_jax.tokenizers.train_all --config experiments/vqgan_tiny.py:level1 --workdir W

The argument is the `shapes` level (data/sources/shapes/levels.py; default level1, the demo's). The
second command also trains the sentencepiece tokenizer and writes the vocabulary
(`cm3leon_jax.tokenizers.train_all.train_tokenizers`, the demo's tokenizer stage).

Measured on level 1 (test split, 200 images) on the 2-core CPU machine, 3,000 steps of batch 8
unless said otherwise (docs/RESULTS.md, "Levels of shapes"):

| variant | verifier exact-match | PSNR | training |
|---|---:|---:|---:|
| vqgan_shapes as it is (plain L2) | 0.35 | 28.7 dB | |
| + edge_weight 20 | 0.92 | 30.6 dB | |
| + edge_weight 50 | 0.935 | 29.6 dB | |
| + edge_weight 100 | 0.89 | 28.3 dB | |
| edge_weight 50, no middle attention | 0.92 | 30.2 dB | 240 s, 13.5 steps/s |
| the same, 2,700 steps (this file; the demo's run) | 0.925 | 29.7 dB | 244 s |
| the same, 2,000 steps at LR 4e-3 | 0.675 | 27.6 dB | 158 s |
| edge_weight 50, codebook 256 / 128 | 0.89 / 0.84 | 29.3 / 28.3 dB | |
| edge_weight 50, no dead-code restarts | 0.875 | 28.8 dB | |
| edge_weight 50, local encoder, 2,700 steps (this file) | 0.88 | 29.5 dB | 210 s |

The plain loss spends the model on the flat background (an object is a few percent of the
pixels) and turns crosses and triangles into blobs; weighting each pixel by 1 + 50 x its local
contrast keeps their outlines. Without the middle attention a step is ~30% cheaper for the
same quality.

The local encoder costs the ceiling a little (0.88 against 0.925) and makes the codes far easier
for the decoder to predict: taming's encoder lets every code see the whole image, so a flat
background was coded with ~23 different codes of 36 interior ones, depending on where the object
and the borders were; the local one codes it with one (interior codes per image 23.4 -> 14.8, the
most common one's share 18% -> 58%). In the demo, the SFT validation loss on text-to-image fell
from 2.66 to 1.54 and captioning, VQA and text-to-image all improved (docs/RESULTS.md, "Codes a
language model can predict").
"""

from cm3leon_jax import experiment_files


def get_config(arg=None):
    cfg = experiment_files.config(__file__, "vqgan_shapes", arg or "level1")
    cfg.vqgan.update(mid_attention=False, edge_weight=50.0, encoder_context="local")
    cfg.vqgan_train.update(num_steps=2700, warmup_steps=100, log_every=250, image_every=900,
                           checkpoint_every=900)
    return cfg
