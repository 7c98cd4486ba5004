"""A tiny CPU model (both presets) for tests, the benchmark's smoke runs and quick experiments.

    python -m cm3leon_jax.plan --config experiments/model_tiny.py --mesh data=8

Parameters (cm3leon, exact, jax.eval_shape via the command above): 172,032.
`experiments/model_tiny.py:chameleon` gives the chameleon preset (QK-norm, 2 key/value heads,
untied embeddings): 254,656 parameters.
Hardware: any CPU; a train step takes milliseconds.
"""

import ml_collections


def get_config(arg=None):
    preset = arg or "cm3leon"
    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict(dict(
        preset=preset,
        vocab_size=1024,
        num_layers=2,
        d_model=64,
        num_heads=4,
        num_kv_heads=2 if preset == "chameleon" else 0,
        max_seq_len=128,
        tie_embeddings=preset != "chameleon",
        qk_norm=preset == "chameleon",
        dtype="float32",
        remat="none",
    ))
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    return config
