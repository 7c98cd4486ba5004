"""The tiny project on `shapes` (CPU, minutes): the demo's setting for every stage.

    python -m cm3leon_jax.pretrain --config experiments/pretrain_tiny.py --workdir W

The argument is the `shapes` level (`experiments/pretrain_tiny.py:level3`;
data/sources/shapes/levels.py); default level1, the demo's. W must hold the prepared shards (`python -m cm3leon_jax.data.prepare
--config experiments/pretrain_tiny.py --workdir W`, after the tokenizers and, optionally,
retrieval). The same file configures every stage of the tiny project (data, tokenizers, retrieval,
prepare, model, training), so one `--config` serves the whole chain; `python -m cm3leon_jax.demo`
runs it (measured figures: docs/BENCHMARKS.md, "End-to-end demo").

Model: the Chameleon preset (RMSNorm, SwiGLU, rotary positions, QK-norm, z-loss 1e-5), 4 layers,
d_model 128, 4 heads, tied embeddings, seq_len 384; vocabulary 1,152 ids (22 special + 512 text
pieces + 512 image codes, padded to a multiple of 128). Chosen by measurement on level 1
(docs/RESULTS.md, "A model that does its tasks"): after 400 pretraining + 600 SFT steps the
Chameleon preset captioned with attribute accuracy 0.57 against the cm3leon preset's 0.26
(pretraining validation loss 2.50 against 3.07 after 400 steps; relative positions let a small
model find the image grid, whose start moves with the prompt's length); LR 2e-3-4e-3 beat 1e-3
(validation loss 2.25 against 2.50; 3e-3 chosen), and SFT steps beat pretraining steps for the
tasks (100 + 900 steps: caption attributes 0.70, VQA 0.69; 400 + 600: 0.65, 0.58).
Retrieval (level 1): a smaller batch (64) and 1,024 candidates per query, because level 1 holds
~330 documents of each colour and the near-duplicate rule (> 0.9) skipped all 256 nearest.
"""

import ml_collections

from cm3leon_jax import experiment_files
from cm3leon_jax.data.sources.shapes import levels

# Longest caption (bytes) per level, + BOS + EOS: the retrieval text tower's length.
_CAPTION_BYTES = {1: 64, 2: 104, 3: 144}


def get_config(arg=None):
    level = levels.parse(arg, default=1)
    cfg = ml_collections.ConfigDict()
    cfg.data = levels.apply(ml_collections.ConfigDict(dict(
        source="shapes", image_size=32, num_train=2000, num_validation=200, num_test=200,
        seed=0)), level)
    # Tokenizers (python -m cm3leon_jax.tokenizers.train_all): experiments/vqgan_tiny.py's VQ-GAN
    # (32x32 -> 8x8 codes, 512 codes, edge-weighted loss, 2,700 steps).
    tokenizers = experiment_files.config(__file__, "vqgan_tiny", f"level{level}")
    cfg.vqgan, cfg.vqgan_train = tokenizers.vqgan, tokenizers.vqgan_train
    cfg.text_tokenizer = ml_collections.ConfigDict(dict(vocab_size=512))
    # Retrieval (train_encoder -> build_index -> neighbours): a small CLIP-style bi-encoder, the
    # settings of experiments/retrieval_shapes.py with smaller steps. Its loss sits on a plateau
    # near log(batch) before it drops: measured on level 1, 150 steps stopped on it (recall@5 0.07,
    # no neighbour survived the rules), 200 steps reached loss 2.60 (recall@5 0.13), 300 2.45.
    cfg.retrieval = ml_collections.ConfigDict(dict(
        k=2, num_candidates=1024 if level == 1 else 256, text_max_length=_CAPTION_BYTES[level],
        text_width=96, text_layers=2, text_heads=4, vision_width=96, vision_layers=2,
        vision_heads=4, patch_size=4, projection_dim=128, train_steps=250, batch_size=64,
        learning_rate=2e-3, warmup_steps=25, log_every=50, checkpoint_every=250,
        embed_batch_size=256))
    cfg.prepare = ml_collections.ConfigDict(dict(num_shards=4, encode_batch_size=64,
                                                 retrieval="auto"))
    cfg.cm3 = ml_collections.ConfigDict(dict(seq_len=384, unmasked_rate=0.1, max_spans=16))
    cfg.model = ml_collections.ConfigDict(dict(
        preset="chameleon", vocab_size=1152, num_layers=4, d_model=128, num_heads=4,
        qk_norm=True, tie_embeddings=True, z_loss=1e-5, max_seq_len=384, dtype="float32",
        remat="none"))
    cfg.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    cfg.train = ml_collections.ConfigDict(dict(
        steps=100, batch_size=8, lr=3e-3, warmup_steps=20, decay="cosine", weight_decay=0.1,
        log_every=25, eval_every=100, eval_batches=4, checkpoint_every=100))
    return cfg
