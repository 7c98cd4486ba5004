r"""CM3leon-350M, the paper's table: 24 layers, d_model 1024, 16 heads, sequence 4,096, peak LR
6e-4, 8M-token batches, 1.4T tokens. Also the one definition the 760M and 7B presets share
(`paper_preset`).

    python -m cm3leon_jax.plan --config experiments/cm3leon_350m.py --mesh data=4,fsdp=8,tensor=1 \
        --batch_size 256
    python -m cm3leon_jax.pretrain --config experiments/cm3leon_350m.py --workdir gs://BUCKET/350m

(the plan's --batch_size is one micro-batch: train.batch_size / train.micro_batches.)

Parameters: 373,293,056 (exact; jax.eval_shape, printed by the plan command above).

Architecture (OPT/metaseq-like, as the paper): pre-LayerNorm without scale or shift, no biases,
GELU MLP 4x, learned absolute positions (init std 0.0002), other weights truncated normal std
0.006 at 3 sigma, each block's output projections initialised to 0, input and output embeddings
tied (OPT's and metaseq's default; the paper does not say otherwise).

Vocabulary 65,536: the paper's 56,320 BPE text tokens + 8,192 VQ-GAN image codes = 64,512, plus
the special tokens (<break>, <eos>, <pad>, <mask>, mask sentinels, begin/end image), rounded up to
2^16 (Chameleon's size), which keeps the vocabulary dimension divisible by any power-of-two
tensor-parallel degree and leaves ~1,000 ids free for special tokens.

Training (`config.train`), from the paper: AdamW, peak LR as the table, linear warmup 1,500 steps,
batch 8M tokens = 2,048 sequences of 4,096 (8,388,608 tokens), steps = tokens seen / batch
(1.4T -> 166,893). Our picks where the paper is silent (metaseq/OPT practice): linear decay to 10%
of the peak, betas (0.9, 0.95), eps 1e-8, weight decay 0.1 (not on embeddings and norms),
global-norm clipping 1.0.

TPU layout (documented, not run; this project has no TPU of this size): compute bfloat16 with
float32 weights and AdamW moments, remat=full. Mesh data x fsdp (tensor=1: at d_model <= 4,096 FSDP
beats tensor parallelism), fsdp fixed per preset and data=-1 taking the rest of the slice; the
2,048-sequence batch is scanned in `micro_batches` so each chip holds a few sequences at a time.
350M: a v5p-64 slice (32 chips, 95 GiB HBM each), data=4 x fsdp=8, 8 micro-batches of 256
sequences (8 per chip per micro-batch): the plan command puts 10.5 GiB per chip (remat=full, xla
attention), 8.3 GiB of it the float32 logits of the output head.
"""

import ml_collections

# size: (layers, d_model, heads, peak LR, tokens seen, fsdp, micro_batches)
PAPER_SIZES = {
    "350m": (24, 1024, 16, 6e-4, 1.4e12, 8, 8),
    "760m": (24, 1536, 16, 5e-4, 1.9e12, 8, 4),
    "7b": (32, 4096, 32, 1.2e-4, 2.4e12, 16, 2),
}
SEQ_LEN = 4096
BATCH_SEQUENCES = 2048  # 8M tokens (2^23) per batch at 4,096 tokens per sequence
WARMUP_STEPS = 1500


def paper_preset(size: str) -> ml_collections.ConfigDict:
    """The model, mesh and training sections of a CM3leon size of the paper's table."""
    layers, d_model, heads, lr, tokens, fsdp, micro_batches = PAPER_SIZES[size]
    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict(dict(
        preset="cm3leon", vocab_size=65536, num_layers=layers, d_model=d_model, num_heads=heads,
        max_seq_len=SEQ_LEN, tie_embeddings=True, dtype="bfloat16", param_dtype="float32",
        remat="full", init_std=0.006, position_init_std=0.0002,
        zero_init_output_projections=True))
    config.cm3 = ml_collections.ConfigDict(dict(seq_len=SEQ_LEN))
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=fsdp, tensor=1))
    config.train = ml_collections.ConfigDict(dict(
        steps=round(tokens / (BATCH_SEQUENCES * SEQ_LEN)), batch_size=BATCH_SEQUENCES,
        micro_batches=micro_batches, lr=lr, warmup_steps=WARMUP_STEPS, decay="linear",
        end_lr_fraction=0.1, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip=1.0,
        log_every=100, eval_every=2000, eval_batches=16, checkpoint_every=2000))
    return config


def get_config(arg=None):
    del arg
    return paper_preset("350m")
