"""The mixed-modal decoder: one module family, two presets (`cm3leon`, `chameleon`).

Read in this order: `layers.py` (norms, projections, MLPs, embeddings, RoPE), `attention.py` (the
attention function and its masks), `kv_cache.py` (fixed-size cache for incremental decoding),
`decoder.py` (blocks and the full model), `loss.py` (next-token cross-entropy + z-loss as sums),
`accounting.py` (parameters and FLOPs per token, from shapes alone).
"""

from cm3leon_jax.models.decoder import Decoder, init_params, positions_from_segments
from cm3leon_jax.models.kv_cache import KVCache, init_cache
from cm3leon_jax.models.loss import LossSums, next_token_loss_sums

__all__ = ["Decoder", "KVCache", "init_params", "LossSums", "init_cache", "next_token_loss_sums",
           "positions_from_segments"]
