"""Fixed-size key/value cache for incremental decoding.

The cache is a plain pytree of fixed-shape arrays plus an int32 `index`, so a decode step
`(logits, cache) = decoder.apply(params, token, cache=cache)` has the same input and output shapes
every step and can run inside `lax.while_loop` / `lax.scan` (and be donated). One call may write
any number of tokens: a prompt (prefill) or one token (a step); they go to slots
`index .. index + T - 1`, and queries attend causally to every earlier slot of their segment.

Layout, chosen for the decode loop (figures in docs/BENCHMARKS.md, "Decoding"):

* keys / values: a tuple with one array per layer, each [batch, kv_heads, max_len, head_dim] in
  the compute dtype (float32 on CPU: `cache_dtype`). Per-layer arrays are separate `while_loop` carries, so XLA writes a step's
  new slot into each in place (`write_layer`: one `dynamic_update_slice`); a single stacked
  [layers, ...] array would be sliced and restacked (the whole cache copied) every step.
* heads before slots: one query's attention is then a batched matrix-vector product whose batch
  axes (batch, kv_heads) are the array's major ones. `attention()` takes keys as
  [batch, kv_len, kv_heads, head_dim]; the decoder passes `keys.transpose(0, 2, 1, 3)`, which XLA
  folds into the dot's dimension numbers (no copy). A [batch, slots, kv_heads, head_dim] cache
  instead made XLA:CPU transpose every layer's keys and values every step (6x the attention time
  at batch 16, 80 slots, and linear in the slots).
* segment_ids [batch, max_len] with 0 for padding and for slots not yet written;
  next_positions [batch]: the position the next token of each row takes when the caller passes
  none (see `Decoder`); index []: slots written so far (the same for every row).

The layout does not depend on `scan_layers`: with scanned layers `Decoder` unrolls the layers
when it has a cache (it slices the stacked weights per layer), and `unstack_layers` does that
slicing once, outside a decode loop, for callers that run many steps (`generation/decode.py`).

The caller sizes the cache: `index + T` must not exceed `max_len` (`dynamic_update_slice` would
clamp and overwrite the last slots instead of failing).
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp

from cm3leon_jax.config import ModelConfig
from cm3leon_jax.models import platform
from cm3leon_jax.models.layers import DTYPES


@flax.struct.dataclass
class KVCache:
    keys: tuple  # per layer: [batch, kv_heads, max_len, head_dim]
    values: tuple  # per layer: [batch, kv_heads, max_len, head_dim]
    segment_ids: jax.Array  # [batch, max_len] int32, 0 = padding / empty
    next_positions: jax.Array  # [batch] int32
    index: jax.Array  # [] int32: slots filled so far (same for every row)

    @property
    def max_len(self) -> int:
        return self.keys[0].shape[2]


def cache_dtype(config: ModelConfig, backend: str | None = None):
    """The dtype keys and values are stored in: the compute dtype, except float32 on CPU. XLA:CPU
    runs the attention's probabilities-times-values product over this layout as an Eigen dot,
    which has no bfloat16 x bfloat16 -> float32 kernel ("Unsupported element type for
    DotThunk"); float32 keys and values make both attention products float32 there (the
    queries are promoted), at twice the cache bytes, a small part of a step's reads."""
    if (backend or platform.backend()) == "cpu":
        return jnp.float32
    return DTYPES[config.dtype]


def init_cache(config: ModelConfig, batch_size: int, max_len: int) -> KVCache:
    """An empty cache for `batch_size` rows of up to `max_len` tokens (prompt + generated)."""
    if max_len < 1:
        raise ValueError(f"max_len must be positive, got {max_len}")
    if config.preset == "cm3leon" and max_len > config.max_seq_len:
        raise ValueError(f"max_len={max_len} exceeds config.model.max_seq_len="
                         f"{config.max_seq_len}, the size of the learned position table")
    shape = (batch_size, config.kv_heads, max_len, config.resolved_head_dim)
    dtype = cache_dtype(config)

    def zeros():
        return tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers))

    return KVCache(keys=zeros(), values=zeros(),
                   segment_ids=jnp.zeros((batch_size, max_len), jnp.int32),
                   next_positions=jnp.zeros((batch_size,), jnp.int32),
                   index=jnp.zeros((), jnp.int32))


def write_layer(layer_keys: jax.Array, layer_values: jax.Array, new_keys: jax.Array,
                new_values: jax.Array, index: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Writes [batch, T, kv_heads, head_dim] new keys/values at slots index..index+T-1 of one
    layer's [batch, kv_heads, max_len, head_dim] cache (in place inside a jitted loop)."""
    start = (0, 0, index, 0)
    return (jax.lax.dynamic_update_slice(
                layer_keys, new_keys.transpose(0, 2, 1, 3).astype(layer_keys.dtype), start),
            jax.lax.dynamic_update_slice(
                layer_values, new_values.transpose(0, 2, 1, 3).astype(layer_values.dtype),
                start))


def attention_view(layer_array: jax.Array) -> jax.Array:
    """One layer's cached keys or values in `attention()`'s [batch, slots, kv_heads, head_dim]
    order (a transpose XLA folds into the attention dots)."""
    return layer_array.transpose(0, 2, 1, 3)


def unstack_layers(params: dict, config: ModelConfig) -> tuple[dict, ModelConfig]:
    """(params, config) with scanned layers (`layers/...`, a leading layer axis) turned into
    unscanned ones (`layers_0/...`, ...) and `scan_layers=False`: the same model. Done once before
    a decode loop, so each step reads plain per-layer weights instead of slicing the stack."""
    if not config.scan_layers or "layers" not in params:  # unscanned, or no weights loaded yet
        return params, config
    params = dict(params)
    stacked = params.pop("layers")
    for i in range(config.num_layers):
        params[f"layers_{i}"] = jax.tree.map(lambda a, i=i: a[i], stacked)
    return params, dataclasses.replace(config, scan_layers=False)
