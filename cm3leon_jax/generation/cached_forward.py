"""The decoder's forward pass for incremental decoding, with a decode-friendly KV cache.

Why this exists next to `models/decoder.py`: `Decoder(cfg).apply(..., cache=KVCache)` is correct
(and is the reference this module is tested against, logits to float32 rounding, for both presets,
GQA, QK-norm, swin-norm, scanned and unscanned layers), but as a *decode loop* on CPU it is slow,
for two reasons (figures in docs/BENCHMARKS.md, "Decoding"; `benchmarks/decode.py` times both):

1. Its cache layout is [layers, batch, slots, kv_heads, head_dim]. Attention of one query against
   it is a batched matrix-vector product whose batch axes (batch, kv_heads) are not the major ones
   of the key array, so XLA:CPU inserts a transposing copy of every layer's keys and values every
   step and runs a slow batched dot: 6x the time of the same attention over a
   [batch, kv_heads, slots, head_dim] cache (batch 16, 80 slots), growing with the slots.
2. The cache travels through the layer loop as one stacked array (`nn.scan` slices it per layer and
   stacks the updated slices again; the unscanned loop `jnp.stack`s them), so every step copies the
   whole cache instead of writing one slot in place (d=512, 8 layers, batch 16, 300 slots: 485 ms
   per step against 84 ms with per-layer caches).

Here the cache is one [batch, kv_heads, slots, head_dim] array per layer (a tuple, so each is a
separate `while_loop` carry that XLA updates in place) and the layers are unrolled. Everything
else is the decoder's own code: the same Flax modules from `models/layers.py` (projections,
norms, MLPs, embeddings, RoPE) applied to the same parameter tree, and the same attention
numerics as `models/attention._xla_attention` (query scaled in the compute dtype, float32 scores
and softmax, the same finite masked logit). The models owner can fold the layout into
`models/kv_cache.py` (see the report in docs/BENCHMARKS.md, "Decoding"); then this module reduces
to a call of `Decoder`.

Slots, segments and positions follow `Decoder`: a call writes T tokens at slots index..index+T-1,
each query attends to earlier-or-equal slots of its own segment (0 = padding), and positions
restart at 0 where a segment starts (first call) or continue from `next_positions`.
"""

from __future__ import annotations

from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp

from cm3leon_jax.config import ModelConfig
from cm3leon_jax.models.attention import MASKED_LOGIT
from cm3leon_jax.models.decoder import positions_from_segments
from cm3leon_jax.models.layers import (DTYPES, GeluMLP, HeadLayerNorm, LayerNorm,
                                       PositionEmbedding, Projection, RMSNorm, SwiGLU,
                                       TokenEmbedding, apply_rope, rope_frequencies)


@flax.struct.dataclass
class DecodeCache:
    keys: tuple  # per layer: [batch, kv_heads, max_len, head_dim] in the compute dtype
    values: tuple  # per layer: same
    segment_ids: jax.Array  # [batch, max_len] int32, 0 = padding / not yet written
    next_positions: jax.Array  # [batch] int32
    index: jax.Array  # [] int32: slots written so far

    @property
    def max_len(self) -> int:
        return self.keys[0].shape[2]


def init_decode_cache(config: ModelConfig, batch_size: int, max_len: int) -> DecodeCache:
    """An empty cache; same limits as `models.kv_cache.init_cache` (cm3leon: max_len must fit the
    learned position table)."""
    if max_len < 1:
        raise ValueError(f"max_len must be positive, got {max_len}")
    if config.preset == "cm3leon" and max_len > config.max_seq_len:
        raise ValueError(f"max_len={max_len} exceeds config.model.max_seq_len="
                         f"{config.max_seq_len}, the size of the learned position table")
    shape = (batch_size, config.kv_heads, max_len, config.resolved_head_dim)
    dtype = DTYPES[config.dtype]
    zeros = tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers))
    return DecodeCache(keys=zeros, values=tuple(jnp.zeros(shape, dtype)
                                                for _ in range(config.num_layers)),
                       segment_ids=jnp.zeros((batch_size, max_len), jnp.int32),
                       next_positions=jnp.zeros((batch_size,), jnp.int32),
                       index=jnp.zeros((), jnp.int32))


def layer_params(params: dict, config: ModelConfig) -> list[dict]:
    """Per-layer parameter trees, from `layers_i` or from the scanned `layers` stack (sliced once,
    outside any decode loop, so the loop reads plain per-layer weights)."""
    if "layers" in params:
        stacked = params["layers"]
        return [jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(config.num_layers)]
    return [params[f"layers_{i}"] for i in range(config.num_layers)]


def _norm(config: ModelConfig, params: Optional[dict], x: jax.Array) -> jax.Array:
    dtype = DTYPES[config.dtype]
    if config.preset == "cm3leon":
        return LayerNorm(eps=config.norm_eps, dtype=dtype).apply({"params": {}}, x)
    return RMSNorm(eps=config.norm_eps, dtype=dtype,
                   param_dtype=DTYPES[config.param_dtype]).apply({"params": params}, x)


def _projection(config: ModelConfig, params: dict, x: jax.Array, features: tuple,
                contract_dims: int = 1) -> jax.Array:
    return Projection(features, (None,) * (contract_dims + len(features)),
                      contract_dims=contract_dims, dtype=DTYPES[config.dtype],
                      param_dtype=DTYPES[config.param_dtype]).apply({"params": params}, x)


def _attention(config: ModelConfig, params: dict, x: jax.Array, layer_keys: jax.Array,
               layer_values: jax.Array, inputs: dict):
    heads, kv_heads, head_dim = config.num_heads, config.kv_heads, config.resolved_head_dim
    q = _projection(config, params["q_proj"], x, (heads, head_dim))
    k = _projection(config, params["k_proj"], x, (kv_heads, head_dim))
    v = _projection(config, params["v_proj"], x, (kv_heads, head_dim))
    if config.qk_norm:
        norm = dict(eps=config.norm_eps, dtype=DTYPES[config.dtype],
                    param_dtype=DTYPES[config.param_dtype])
        q = HeadLayerNorm("heads", **norm).apply({"params": params["q_norm"]}, q)
        k = HeadLayerNorm("kv_heads", **norm).apply({"params": params["k_norm"]}, k)
    if inputs["rope"] is not None:
        cos, sin = inputs["rope"]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    start = (0, 0, inputs["index"], 0)
    layer_keys = jax.lax.dynamic_update_slice(
        layer_keys, k.transpose(0, 2, 1, 3).astype(layer_keys.dtype), start)
    layer_values = jax.lax.dynamic_update_slice(
        layer_values, v.transpose(0, 2, 1, 3).astype(layer_values.dtype), start)
    batch, length = x.shape[:2]
    group = heads // kv_heads
    scale = head_dim ** -0.5
    grouped = (q * jnp.asarray(scale, q.dtype)).reshape(batch, length, kv_heads, group, head_dim)
    grouped = grouped.transpose(0, 2, 3, 1, 4)  # [batch, kv_heads, group, length, head_dim]
    scores = jnp.einsum("bkgtd,bksd->bkgts", grouped, layer_keys,
                        preferred_element_type=jnp.float32)
    scores = jnp.where(inputs["mask"][:, None, None], scores, MASKED_LOGIT)
    probs = jax.nn.softmax(scores, axis=-1).astype(layer_values.dtype)
    out = jnp.einsum("bkgts,bksd->bkgtd", probs, layer_values)
    out = out.transpose(0, 3, 1, 2, 4).reshape(batch, length, heads, head_dim).astype(q.dtype)
    out = _projection(config, params["o_proj"], out, (config.d_model,), contract_dims=2)
    return out, layer_keys, layer_values


def _mlp(config: ModelConfig, params: dict, x: jax.Array) -> jax.Array:
    cls = GeluMLP if config.preset == "cm3leon" else SwiGLU
    return cls(hidden_dim=config.hidden_dim, init_std=config.init_std,
               zero_init_output=config.zero_init_output_projections, dtype=DTYPES[config.dtype],
               param_dtype=DTYPES[config.param_dtype]).apply({"params": params}, x)


def forward(params: dict, config: ModelConfig, tokens: jax.Array, cache: DecodeCache,
            segment_ids: Optional[jax.Array] = None, *, last_only: bool = False,
            layers: Optional[list[dict]] = None) -> tuple[jax.Array, DecodeCache]:
    """(logits float32 [batch, T or 1, vocab], new cache) for tokens int32 [batch, T].

    segment_ids: [batch, T] for the first call (prompt: 0 on padding); later calls continue each
      row's last segment. last_only: return the logits of the last position only (prefill needs
      no more). layers: `layer_params(params, config)` computed once by the caller (else here).
    """
    cfg = config
    dtype, param_dtype = DTYPES[cfg.dtype], DTYPES[cfg.param_dtype]
    batch, length = tokens.shape
    index = cache.index
    if segment_ids is None:
        last = jax.lax.dynamic_index_in_dim(cache.segment_ids, jnp.maximum(index - 1, 0), axis=1)
        segment_ids = jnp.broadcast_to(jnp.where(index > 0, last, 1), (batch, length))
    segment_ids = segment_ids.astype(jnp.int32)
    continuing = cache.next_positions[:, None] + jnp.arange(length)[None, :]
    positions = jnp.where(index == 0, positions_from_segments(segment_ids), continuing)
    key_segments = jax.lax.dynamic_update_slice(cache.segment_ids, segment_ids, (0, index))
    query_slots = index + jnp.arange(length)
    key_slots = jnp.arange(cache.max_len)
    mask = ((key_slots[None, None, :] <= query_slots[None, :, None])
            & (segment_ids[:, :, None] == key_segments[:, None, :]))
    rope = None
    if cfg.preset == "chameleon":
        rope = rope_frequencies(positions, cfg.resolved_head_dim, cfg.rope_theta)
    inputs = {"mask": mask, "rope": rope, "index": index}

    embed = TokenEmbedding(cfg.vocab_size, cfg.d_model, cfg.init_std, dtype=dtype,
                           param_dtype=param_dtype)
    x = embed.apply({"params": params["embed_tokens"]}, tokens)
    if cfg.preset == "cm3leon":
        x = x + PositionEmbedding(cfg.max_seq_len, cfg.d_model, cfg.position_init_std,
                                  dtype=dtype, param_dtype=param_dtype).apply(
                                      {"params": params["embed_positions"]}, positions)
    layers = layer_params(params, cfg) if layers is None else layers
    new_keys, new_values = [], []
    for layer, layer_keys, layer_values in zip(layers, cache.keys, cache.values):
        norms = (layer.get("attention_norm"), layer.get("mlp_norm"))
        if cfg.swin_norm:
            out, layer_keys, layer_values = _attention(cfg, layer["attention"], x, layer_keys,
                                                       layer_values, inputs)
            x = x + _norm(cfg, norms[0], out)
            x = x + _norm(cfg, norms[1], _mlp(cfg, layer["mlp"], x))
        else:
            out, layer_keys, layer_values = _attention(cfg, layer["attention"],
                                                       _norm(cfg, norms[0], x), layer_keys,
                                                       layer_values, inputs)
            x = x + out
            x = x + _mlp(cfg, layer["mlp"], _norm(cfg, norms[1], x))
        new_keys.append(layer_keys)
        new_values.append(layer_values)
    if last_only:
        x = x[:, -1:]
    x = _norm(cfg, params.get("final_norm"), x)
    if cfg.tie_embeddings:
        logits = embed.apply({"params": params["embed_tokens"]}, x, method=TokenEmbedding.attend)
    else:
        logits = _projection(cfg, params["lm_head"], x, (cfg.vocab_size,))
    new_cache = DecodeCache(keys=tuple(new_keys), values=tuple(new_values),
                            segment_ids=key_segments,
                            next_positions=positions[:, -1].astype(jnp.int32) + 1,
                            index=index + length)
    return logits.astype(jnp.float32), new_cache

