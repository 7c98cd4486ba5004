"""Fixed-size key/value cache for incremental decoding.

The cache is a plain pytree of fixed-shape arrays plus an int32 `index`, so a decode step
`(logits, cache) = decoder.apply(params, token, cache=cache)` has the same input and output shapes
every step and can run inside `lax.while_loop` / `lax.scan` (and be donated). One call may write
any number of tokens: a prompt (prefill) or one token (a step); they go to slots
`index .. index + T - 1`, and queries attend causally to every earlier slot of their segment.

Layout: keys / values [layers, batch, max_len, kv_heads, head_dim] in the compute dtype (stacked on
a leading layer axis, which is also what `nn.scan` over layers consumes); `segment_ids`
[batch, max_len] with 0 for padding and for slots not yet written; `next_positions` [batch]: the
position the next token of each row takes when the caller passes none (see `Decoder`).

The caller sizes the cache: `index + T` must not exceed `max_len` (`dynamic_update_slice` would
clamp and overwrite the last slots instead of failing).
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from cm3leon_jax.config import ModelConfig
from cm3leon_jax.models.layers import DTYPES


@flax.struct.dataclass
class KVCache:
    keys: jax.Array  # [layers, batch, max_len, kv_heads, head_dim]
    values: jax.Array  # [layers, batch, max_len, kv_heads, head_dim]
    segment_ids: jax.Array  # [batch, max_len] int32, 0 = padding / empty
    next_positions: jax.Array  # [batch] int32
    index: jax.Array  # [] int32: slots filled so far (same for every row)

    @property
    def max_len(self) -> int:
        return self.keys.shape[2]


def init_cache(config: ModelConfig, batch_size: int, max_len: int) -> KVCache:
    """An empty cache for `batch_size` rows of up to `max_len` tokens (prompt + generated)."""
    if max_len < 1:
        raise ValueError(f"max_len must be positive, got {max_len}")
    if config.preset == "cm3leon" and max_len > config.max_seq_len:
        raise ValueError(f"max_len={max_len} exceeds config.model.max_seq_len="
                         f"{config.max_seq_len}, the size of the learned position table")
    shape = (config.num_layers, batch_size, max_len, config.kv_heads, config.resolved_head_dim)
    dtype = DTYPES[config.dtype]
    return KVCache(keys=jnp.zeros(shape, dtype), values=jnp.zeros(shape, dtype),
                   segment_ids=jnp.zeros((batch_size, max_len), jnp.int32),
                   next_positions=jnp.zeros((batch_size,), jnp.int32),
                   index=jnp.zeros((), jnp.int32))


def write_layer(layer_keys: jax.Array, layer_values: jax.Array, new_keys: jax.Array,
                new_values: jax.Array, index: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Writes [batch, T, kv_heads, head_dim] new keys/values at slots index..index+T-1 of one
    layer's [batch, max_len, kv_heads, head_dim] cache."""
    start = (0, index, 0, 0)
    return (jax.lax.dynamic_update_slice(layer_keys, new_keys.astype(layer_keys.dtype), start),
            jax.lax.dynamic_update_slice(layer_values, new_values.astype(layer_values.dtype),
                                         start))
