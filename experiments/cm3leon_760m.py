r"""CM3leon-760M, the paper's table: 24 layers, d_model 1536, 16 heads,
sequence 4,096, peak LR 5e-4.

    python -m cm3leon_jax.plan --config experiments/cm3leon_760m.py --mesh data=2,fsdp=4,tensor=1 \
        --batch_size 16

Parameters: 786,432,000 (exact; jax.eval_shape, printed by the command above).

Architecture (OPT/metaseq-like, as the paper): pre-LayerNorm without scale or shift, no biases,
GELU MLP 4x, learned absolute positions (init std 0.0002), other weights truncated normal std
0.006 at 3 sigma, each block's output projections initialised to 0, input and output embeddings
tied (OPT's and metaseq's default; the paper does not say otherwise).

Vocabulary 65,536: the paper's 56,320 BPE text tokens + 8,192 VQ-GAN image codes = 64,512, plus
the special tokens (<break>, <eos>, <pad>, <mask>, mask sentinels, begin/end image), rounded up to
2^16 (Chameleon's size), which keeps the vocabulary dimension divisible by any power-of-two
tensor-parallel degree and leaves ~1,000 ids free for special tokens.

Compute dtype bfloat16 with float32 weights, remat=full (the plan command prints the per-layer
activations under each remat policy: at 4,096 tokens `none` keeps ~30x what `full` keeps); the
mesh shards weights and AdamW state over every device (fsdp=-1). Planned, not trained: this
project has trained no model of this size (no hardware for it).
"""

import ml_collections


def get_config(arg=None):
    del arg
    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict(dict(
        preset="cm3leon",
        vocab_size=65536,
        num_layers=24,
        d_model=1536,
        num_heads=16,
        max_seq_len=4096,
        tie_embeddings=True,
        dtype="bfloat16",
        param_dtype="float32",
        remat="full",
        init_std=0.006,
        position_init_std=0.0002,
        zero_init_output_projections=True,
    ))
    config.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
    return config
