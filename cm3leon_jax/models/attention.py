"""Causal, segment-aware attention as one function with interchangeable implementations.

`attention(query, key, value, ...)` is the only entry point; the decoder never builds masks itself.
Which token may see which is decided by two things only:

* slots (causality): the absolute index of each query and key in the (possibly cached) sequence;
  a query sees keys at its own slot or earlier. During training the slots are 0..T-1 for both;
  during incremental decoding the queries sit at `cache.index + 0..T-1` and the keys are every cache
  slot, so empty slots beyond the queries are masked by causality alone.
* segment ids (packing): several documents packed into one row must not see each other, so a query
  sees a key only when their segment ids are equal. Padding has segment id 0 and so only sees other
  padding; every query sees at least itself, so no softmax row is ever empty (no NaNs).

Implementations (`config.model.attention`):

* `xla`: the reference. einsum in the compute dtype, scores and softmax in float32, grouped-query
  attention without materialising repeated keys (queries are reshaped to [kv_heads, group]).
  Memory O(T^2) per head; runs on every backend. Self-attention of 256+ tokens is computed in
  query blocks that skip the key tiles above the diagonal (`_blockwise_causal_xla`), the same
  numbers with up to ~45% less work.
* `cudnn`: `jax.nn.dot_product_attention(implementation="cudnn")`, cuDNN's fused flash attention
  (NVIDIA GPUs, float16/bfloat16), with the same boolean mask.
* a Pallas `splash` kernel (TPU; CPU in interpret mode) slots in as a third branch of
  `attention()` plus an entry in `config.ATTENTION_IMPLEMENTATIONS`: its block-sparse mask is built
  from the same slots and segment ids.

`require_supported` rejects an implementation the current backend cannot run, with a
`ConfigError`, before anything is traced or compiled.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from cm3leon_jax.config import ATTENTION_IMPLEMENTATIONS, ConfigError

# Backends each implementation runs on (jax.default_backend() names).
SUPPORTED_BACKENDS = {"xla": ("cpu", "gpu", "tpu"), "cudnn": ("gpu",)}
# Name of the attention output for remat policies (the custom VJP hides its dots from them).
CHECKPOINT_NAME = "attention"
# A finite "minus infinity": exp() of it is exactly 0, and a masked row can never become NaN.
MASKED_LOGIT = -0.7 * float(jnp.finfo(jnp.float32).max)


def require_supported(implementation: str, backend: Optional[str] = None) -> None:
    """Raises ConfigError when `implementation` is unknown or cannot run on `backend`."""
    if implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ConfigError(f"config.model.attention={implementation!r}: must be one of "
                          f"{', '.join(map(repr, ATTENTION_IMPLEMENTATIONS))}")
    backend = backend or jax.default_backend()
    allowed = SUPPORTED_BACKENDS[implementation]
    if backend not in allowed:
        raise ConfigError(
            f"config.model.attention={implementation!r}: runs only on {', '.join(allowed)} "
            f"backends, and this process's JAX backend is {backend!r}; use 'xla' here")


def attention_mask(query_segment_ids: jax.Array, key_segment_ids: jax.Array,
                   query_slots: jax.Array, key_slots: jax.Array) -> jax.Array:
    """Boolean [batch, q_len, kv_len]: True where a query may attend to a key.

    query_segment_ids [batch, q_len], key_segment_ids [batch, kv_len]; slots are 1-D
    [q_len] / [kv_len] (shared by the batch).
    """
    causal = key_slots[None, None, :] <= query_slots[None, :, None]
    same_segment = query_segment_ids[:, :, None] == key_segment_ids[:, None, :]
    return causal & same_segment


def _grouped(query, kv_heads):
    batch, q_len, heads, head_dim = query.shape
    return query.reshape(batch, q_len, kv_heads, heads // kv_heads, head_dim)


def _masked_scores(grouped_query, key, mask, scale):
    """float32 scores [batch, kv_heads, group, q_len, kv_len], masked entries MASKED_LOGIT."""
    scores = jnp.einsum("btkgd,bskd->bkgts", grouped_query, key,
                        preferred_element_type=jnp.float32) * scale
    return jnp.where(mask[:, None, None, :, :], scores, MASKED_LOGIT)


def _xla_attention_autodiff(query, key, value, mask, scale):
    """The textbook form, differentiated by JAX (kept as the reference the tests compare with)."""
    scores = _masked_scores(_grouped(query, key.shape[2]), key, mask, scale)
    probs = jax.nn.softmax(scores, axis=-1).astype(value.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, value)
    return out.reshape(query.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _xla_attention(query, key, value, mask, scale):
    """Attention with a FlashAttention-style backward pass: the forward keeps only its inputs,
    its output and the softmax log-normaliser per query (no [q_len, kv_len] probabilities); the
    backward recomputes the probabilities from them and uses rowsum(dO * O) in place of the
    rowsum(dP * P) reduction over kv_len. Fewer passes over the float32 score matrix (what is
    memory-bound on CPU), less activation memory, same numbers as `_xla_attention_autodiff`."""
    return _xla_attention_fwd(query, key, value, mask, scale)[0]


def _xla_attention_fwd(query, key, value, mask, scale):
    grouped = _grouped(query, key.shape[2])
    scores = _masked_scores(grouped, key, mask, scale)
    row_max = jnp.max(scores, axis=-1, keepdims=True)
    unnormalized = jnp.exp(scores - row_max)
    row_sum = jnp.sum(unnormalized, axis=-1, keepdims=True)
    # Normalise after the product: a [q_len, head_dim] division instead of [q_len, kv_len].
    out = jnp.einsum("bkgts,bskd->btkgd", unnormalized.astype(value.dtype), value,
                     preferred_element_type=jnp.float32)
    row_sum_btkg = jnp.moveaxis(row_sum[..., 0], 3, 1)[..., None]
    out = (out / row_sum_btkg).astype(query.dtype).reshape(query.shape)
    log_normalizer = (row_max + jnp.log(row_sum))[..., 0]  # [batch, kv_heads, group, q_len]
    return out, (query, key, value, mask, out, log_normalizer)


def _xla_attention_bwd(scale, residuals, d_out):
    query, key, value, mask, out, log_normalizer = residuals
    kv_heads = key.shape[2]
    grouped = _grouped(query, kv_heads)
    d_out_grouped = _grouped(d_out.astype(query.dtype), kv_heads)
    probs = jnp.exp(_masked_scores(grouped, key, mask, scale) - log_normalizer[..., None])
    d_value = jnp.einsum("bkgts,btkgd->bskd", probs.astype(value.dtype), d_out_grouped)
    d_probs = jnp.einsum("btkgd,bskd->bkgts", d_out_grouped, value,
                         preferred_element_type=jnp.float32)
    # rowsum(dP * P) == rowsum(dO * O): a reduction over head_dim instead of kv_len.
    d_out_dot_out = jnp.sum(d_out_grouped.astype(jnp.float32)
                            * _grouped(out, kv_heads).astype(jnp.float32), axis=-1)
    d_out_dot_out = jnp.moveaxis(d_out_dot_out, 1, 3)  # [batch, kv_heads, group, q_len]
    d_scores = (probs * (d_probs - d_out_dot_out[..., None]) * scale).astype(query.dtype)
    d_query = jnp.einsum("bkgts,bskd->btkgd", d_scores, key).reshape(query.shape)
    d_key = jnp.einsum("bkgts,btkgd->bskd", d_scores, grouped)
    return d_query, d_key.astype(key.dtype), d_value.astype(value.dtype), None


_xla_attention.defvjp(_xla_attention_fwd, _xla_attention_bwd)


def causal_query_blocks(length: int) -> int:
    """How many query blocks `_blockwise_causal_xla` splits a self-attention of `length` into:
    up to 8, each at least 128 long (below that the extra ops cost more than they save)."""
    for blocks in (8, 4, 2):
        if length % blocks == 0 and length // blocks >= 128:
            return blocks
    return 1


def _blockwise_causal_xla(query, key, value, segment_ids, blocks, scale):
    """Causal self-attention computed per query block against only the keys at or before the
    block's end: block i of n reads (i + 1) / n of the keys, so the n x n grid of score tiles
    shrinks to its lower triangle (10 of 16 tiles at n = 4, 36 of 64 at n = 8): fewer FLOPs and,
    on memory-bound CPUs, proportionally less traffic through the float32 scores."""
    length = query.shape[1]
    size = length // blocks
    outputs = []
    for i in range(blocks):
        start, end = i * size, (i + 1) * size
        mask = attention_mask(segment_ids[:, start:end], segment_ids[:, :end],
                              jnp.arange(start, end), jnp.arange(end))
        outputs.append(_xla_attention(query[:, start:end], key[:, :end], value[:, :end], mask,
                                      scale))
    return checkpoint_name(jnp.concatenate(outputs, axis=1), CHECKPOINT_NAME)


def _jax_nn_attention(query, key, value, mask, scale, implementation):
    return jax.nn.dot_product_attention(query, key, value, mask=mask[:, None, :, :], scale=scale,
                                        implementation=implementation)


def attention(query: jax.Array, key: jax.Array, value: jax.Array, *,
              query_segment_ids: jax.Array, key_segment_ids: jax.Array,
              query_slots: Optional[jax.Array] = None, key_slots: Optional[jax.Array] = None,
              implementation: str = "xla") -> jax.Array:
    """Scaled dot-product attention, causal by slot and blocked across segments.

    query [batch, q_len, heads, head_dim]; key, value [batch, kv_len, kv_heads, head_dim] with
    heads % kv_heads == 0 (grouped-query attention when kv_heads < heads). Default slots place the
    queries at the end of the keys (q_len == kv_len: ordinary causal self-attention).
    Returns [batch, q_len, heads, head_dim] in the query dtype.
    """
    require_supported(implementation)
    q_len, kv_len = query.shape[1], key.shape[1]
    if query.shape[2] % key.shape[2]:
        raise ValueError(f"query heads ({query.shape[2]}) must be a multiple of key/value heads "
                         f"({key.shape[2]})")
    scale = query.shape[-1] ** -0.5
    self_attention = query_slots is None and key_slots is None and q_len == kv_len
    if implementation == "xla" and self_attention and causal_query_blocks(q_len) > 1:
        return _blockwise_causal_xla(query, key, value, query_segment_ids,
                                     causal_query_blocks(q_len), scale)
    if query_slots is None:
        query_slots = jnp.arange(q_len) + (kv_len - q_len)
    if key_slots is None:
        key_slots = jnp.arange(kv_len)
    mask = attention_mask(query_segment_ids, key_segment_ids, query_slots, key_slots)
    if implementation == "xla":
        return checkpoint_name(_xla_attention(query, key, value, mask, scale), CHECKPOINT_NAME)
    return _jax_nn_attention(query, key, value, mask, scale, implementation)
