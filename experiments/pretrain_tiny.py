"""Tiny pretraining on `shapes` (CPU, minutes): the demo's and the tests' setting.

    python -m cm3leon_jax.pretrain --config experiments/pretrain_tiny.py --workdir W

W must hold the prepared shards (`python -m cm3leon_jax.data.prepare --config
experiments/pretrain_tiny.py --workdir W`, after the tokenizers and, optionally, retrieval). The
same file configures every stage of the tiny project (data, tokenizers, retrieval, prepare, model,
training), so one `--config` serves the whole chain; `python -m cm3leon_jax.demo` runs it.

Model: cm3leon preset, 4 layers, d_model 128, 4 heads, seq_len 384 (a query of ~90 tokens plus two
retrieved documents and CM3 sentinels fit one row); vocabulary 1,152 ids (22 special + 512 text
pieces + 512 image codes, padded to a multiple of 128).
Hardware: the 2-core CPU machine; see docs/BENCHMARKS.md for the measured wall time and loss.
"""

import ml_collections

from cm3leon_jax import experiment_files


def get_config(arg=None):
    del arg
    cfg = ml_collections.ConfigDict()
    cfg.data = ml_collections.ConfigDict(dict(
        source="shapes", image_size=32, num_train=2000, num_validation=200, num_test=200, seed=0))
    # Tokenizers (python -m cm3leon_jax.tokenizers.train_all): experiments/vqgan_tiny.py's VQ-GAN
    # (32x32 -> 8x8 codes, 512 codes, 800 steps: the minute-scale setting measured there).
    tokenizers = experiment_files.config(__file__, "vqgan_tiny")
    cfg.vqgan, cfg.vqgan_train = tokenizers.vqgan, tokenizers.vqgan_train
    cfg.text_tokenizer = ml_collections.ConfigDict(dict(vocab_size=512))
    # Retrieval (train_encoder -> build_index -> neighbours): a small CLIP-style bi-encoder.
    # The settings of experiments/retrieval_shapes.py, which reached recall@5 0.80 on the shapes test
    # split. A smaller tower (width 64, patch 8, 200 steps) was tried for the demo and stayed at
    # chance, so every candidate looked alike and the relevance rule left no neighbour at all.
    cfg.retrieval = ml_collections.ConfigDict(dict(
        k=2, num_candidates=256, text_max_length=144, text_width=96, text_layers=2, text_heads=4,
        vision_width=96, vision_layers=2, vision_heads=4, patch_size=4, projection_dim=128,
        train_steps=300, batch_size=128, learning_rate=2e-3, warmup_steps=30, log_every=50,
        checkpoint_every=300, embed_batch_size=256))
    cfg.prepare = ml_collections.ConfigDict(dict(num_shards=4, encode_batch_size=64,
                                                 retrieval="auto"))
    cfg.cm3 = ml_collections.ConfigDict(dict(seq_len=384, unmasked_rate=0.1, max_spans=16))
    cfg.model = ml_collections.ConfigDict(dict(
        preset="cm3leon", vocab_size=1152, num_layers=4, d_model=128, num_heads=4,
        max_seq_len=384, dtype="float32", remat="none"))
    cfg.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    cfg.train = ml_collections.ConfigDict(dict(
        steps=300, batch_size=8, lr=3e-3, warmup_steps=30, decay="cosine", weight_decay=0.1,
        log_every=25, eval_every=100, eval_batches=4, checkpoint_every=100))
    return cfg
