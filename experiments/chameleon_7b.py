r"""Chameleon-7B architecture (Llama-like; the shapes of HF `ChameleonConfig()`, i.e.
facebook/chameleon-7b).

    python -m cm3leon_jax.plan --config experiments/chameleon_7b.py --mesh data=2,fsdp=4,tensor=1 \
        --batch_size 16

Parameters: 7,013,666,816 (exact; jax.eval_shape, printed by the command above).

32 layers, d_model 4096, 32 heads (no grouped-query attention at 7B), SwiGLU width 11,008
(8/3 * 4096 rounded up to 256), RMSNorm eps 1e-5, RoPE theta 10,000, QK-norm (per-head LayerNorm
weights and biases, as HF), untied input/output embeddings, z-loss 1e-5, vocabulary 65,536
(text BPE + 8,192 image codes + specials), sequence 4,096. The paper uses norm reordering
(swin_norm) only for 34B; set --config.model.swin_norm=True to try it. Weights init: truncated
normal std 0.02 (HF `initializer_range`), output projections not zeroed (Llama practice).
Training and TPU layout: `paper_preset("7b")` of `experiments/cm3leon_350m.py` (8M-token batches of
2,048 x 4,096, LR 1.2e-4, 1,500 warmup steps, linear decay, v5p-512 as data=16 x fsdp=16, 2
micro-batches), with the Chameleon paper's AdamW settings: betas (0.9, 0.95), eps 1e-5, weight
decay 0.1, clipping 1.0. The LR, warmup and token count are CM3leon-7B's: PAPER_NOTES gives no
Chameleon-specific ones. Planned, not trained: this project has trained no model of this size.
"""

import ml_collections

from cm3leon_jax import experiment_files


def get_config(arg=None):
    del arg
    config = experiment_files.module(__file__, "cm3leon_350m").paper_preset("7b")  # cm3 / mesh / train sections; the model is replaced
    config.train.eps = 1e-5
    config.model = ml_collections.ConfigDict(dict(
        preset="chameleon",
        vocab_size=65536,
        num_layers=32,
        d_model=4096,
        num_heads=32,
        num_kv_heads=32,
        mlp_dim=11008,
        max_seq_len=4096,
        tie_embeddings=False,
        qk_norm=True,
        swin_norm=False,
        rope_theta=10000.0,
        norm_eps=1e-5,
        z_loss=1e-5,
        dtype="bfloat16",
        param_dtype="float32",
        remat="full",
        init_std=0.02,
        zero_init_output_projections=False,
    ))
    return config
