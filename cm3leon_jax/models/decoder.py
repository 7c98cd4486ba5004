"""The decoder-only transformer: one module family, two presets (`config.model.preset`).

cm3leon (OPT / metaseq, the CM3leon paper):
  x = tok_emb(tokens) + pos_emb(positions)
  per block: x += Attn(LN(x)); x += GeluMLP(LN(x))         (LN without scale or shift)
  logits = LN(x) @ W_out                                  (W_out = tok_emb^T when tied)
chameleon (Llama-like, the Chameleon paper / HF `ChameleonForConditionalGeneration`):
  x = tok_emb(tokens); RoPE on q and k inside attention
  per block: x += Attn(RMS(x)); x += SwiGLU(RMS(x))
  with swin_norm: x += RMS(Attn(x)); x += RMS(SwiGLU(x))  (norm after the sub-block)
  logits = RMS(x) @ W_out
Both: no biases, no dropout, optional QK-norm and grouped-query attention.

Packing and positions (a deliberate choice): a row may hold several documents, told apart by
`segment_ids` (0 = padding). Attention never crosses a segment boundary, and when the caller does
not pass `positions` they restart at 0 at every segment start, so a packed document sees exactly the
positions it would see alone, and the same positions as at generation time, where each prompt
starts at 0. The learned position table therefore only needs `max_seq_len` rows.

Calling convention (linen):
  logits = Decoder(cfg).apply({"params": params}, tokens, segment_ids, positions)
  logits, cache = Decoder(cfg).apply({"params": params}, tokens, segment_ids, positions,
                                     cache=cache)
tokens / segment_ids / positions are int32 [batch, length]; logits are float32
[batch, length, vocab] ([batch, 1, vocab] with `last_only=True`). With a cache, the tokens are written at slots cache.index.. and attend to
all earlier slots of their segment (prefill: many tokens; a decode step: one). Without
`segment_ids` a decode call continues the segment of the last cached token; without `positions`
the first call (empty cache) derives them from the segments and later calls continue each row
from `cache.next_positions`. Pass both explicitly to start a new document in a non-empty cache.

Layers run as one `nn.scan` over stacked weights (`scan_layers=True`, param paths
`layers/...` with a leading `layers` axis) or as a Python loop (`layers_0/...`, `layers_1/...`).
With a cache they are always unrolled, each layer on its own cache arrays (`models/kv_cache.py`
says why); scanned weights are then sliced per layer, which a decode loop does once beforehand
with `kv_cache.unstack_layers`.
`remat` wraps each block in `nn.remat` with the configured checkpoint policy.
"""

from __future__ import annotations

import functools
from typing import Optional

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from cm3leon_jax.config import ModelConfig
from cm3leon_jax.models import attention as attention_lib
from cm3leon_jax.models import backward as backward_lib
from cm3leon_jax.models import kv_cache as kv_cache_lib
from cm3leon_jax.models import matmul as matmul_lib
from cm3leon_jax.models.kv_cache import KVCache
from cm3leon_jax.models.layers import (DTYPES, GeluMLP, HeadLayerNorm, LayerNorm,
                                       PositionEmbedding, Projection, RMSNorm, SwiGLU,
                                       TokenEmbedding, apply_rope, constrain, rope_frequencies)

_policies = jax.checkpoint_policies
# Every matmul of the model is a custom-VJP call (weight matmuls in models/matmul.py, the
# attention core in models/attention.py) whose output carries a checkpoint name; JAX's own
# `dots_saveable` would look inside the attention's forward and keep its float32
# [q_len, kv_len] scores, more than no remat at all. So the dot policies are written with names:
# `dots_saveable` keeps the outputs of all matmuls (weight matmuls and attention), and
# `dots_with_no_batch_dims_saveable` those of the weight matmuls only (the ones without batch
# dimensions).
REMAT_POLICIES = {
    "full": _policies.nothing_saveable,
    "dots_saveable": _policies.save_only_these_names(matmul_lib.CHECKPOINT_NAME,
                                                     attention_lib.CHECKPOINT_NAME),
    "dots_with_no_batch_dims_saveable": _policies.save_only_these_names(
        matmul_lib.CHECKPOINT_NAME),
}

RESIDUAL_AXES = ("batch", "length", "embed")


def positions_from_segments(segment_ids: jax.Array) -> jax.Array:
    """Positions [batch, length] that restart at 0 wherever the segment id changes."""
    length = segment_ids.shape[1]
    index = jnp.arange(length, dtype=jnp.int32)[None, :]
    starts = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], dtype=bool),
                              segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    segment_start = jax.lax.cummax(jnp.where(starts, index, 0), axis=1)
    return index - segment_start


@flax.struct.dataclass
class BlockInputs:
    """What every block needs besides the residual stream (broadcast across `nn.scan`)."""

    segment_ids: jax.Array  # [batch, length] of the queries
    key_segment_ids: jax.Array  # [batch, kv_len]: = segment_ids, or the cache's after writing
    query_slots: jax.Array  # [length]: absolute slots of the queries
    rope_cos: Optional[jax.Array]  # [batch, length, head_dim] (chameleon) or None
    rope_sin: Optional[jax.Array]
    cache_index: Optional[jax.Array]  # [] int32 when decoding with a cache, else None


def _norm(config: ModelConfig, name: str) -> nn.Module:
    dtype = DTYPES[config.dtype]
    if config.preset == "cm3leon":
        return LayerNorm(eps=config.norm_eps, dtype=dtype, name=name)
    return RMSNorm(eps=config.norm_eps, dtype=dtype, param_dtype=DTYPES[config.param_dtype],
                   name=name)


class Attention(nn.Module):
    """Self-attention sub-block: q/k/v projections, QK-norm, RoPE, `attention()`, o_proj."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array, inputs: BlockInputs,
                 layer_cache: Optional[tuple[jax.Array, jax.Array]]):
        cfg = self.config
        dense = dict(init_std=cfg.init_std, dtype=DTYPES[cfg.dtype],
                     param_dtype=DTYPES[cfg.param_dtype],
                     custom_backward=backward_lib.use_custom(cfg.backward, "matmul", cfg.dtype))
        heads, kv_heads, head_dim = cfg.num_heads, cfg.kv_heads, cfg.resolved_head_dim
        q = Projection((heads, head_dim), ("embed", "heads", "head_dim"), name="q_proj",
                       **dense)(x)
        k = Projection((kv_heads, head_dim), ("embed", "kv_heads", "head_dim"), name="k_proj",
                       **dense)(x)
        v = Projection((kv_heads, head_dim), ("embed", "kv_heads", "head_dim"), name="v_proj",
                       **dense)(x)
        if cfg.qk_norm:
            norm = dict(eps=cfg.norm_eps, dtype=dense["dtype"], param_dtype=dense["param_dtype"])
            q = HeadLayerNorm("heads", name="q_norm", **norm)(q)
            k = HeadLayerNorm("kv_heads", name="k_norm", **norm)(k)
        if inputs.rope_cos is not None:
            q = apply_rope(q, inputs.rope_cos, inputs.rope_sin)
            k = apply_rope(k, inputs.rope_cos, inputs.rope_sin)
        q = constrain(q, ("batch", "length", "heads", "head_dim"))
        k = constrain(k, ("batch", "length", "kv_heads", "head_dim"))
        v = constrain(v, ("batch", "length", "kv_heads", "head_dim"))
        new_cache = None
        if layer_cache is not None:
            new_cache = kv_cache_lib.write_layer(layer_cache[0], layer_cache[1], k, v,
                                                 inputs.cache_index)
            k, v = (kv_cache_lib.attention_view(a) for a in new_cache)
        # Without a cache, queries and keys are the same positions: leaving the slots to
        # `attention` lets it use its blockwise causal path.
        decoding = layer_cache is not None
        out = attention_lib.attention(
            q, k, v, query_segment_ids=inputs.segment_ids,
            key_segment_ids=inputs.key_segment_ids,
            query_slots=inputs.query_slots if decoding else None,
            key_slots=jnp.arange(k.shape[1]) if decoding else None,
            implementation=cfg.attention,
            custom_backward=backward_lib.use_custom(cfg.backward, "attention", cfg.dtype))
        out = constrain(out, ("batch", "length", "heads", "head_dim"))
        out = Projection((cfg.d_model,), ("heads", "head_dim", "embed"), contract_dims=2,
                         zero_init=cfg.zero_init_output_projections, name="o_proj", **dense)(out)
        return out, new_cache


class Block(nn.Module):
    """One transformer block (pre-norm, or post-sub-block norm with swin_norm)."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array, inputs: BlockInputs,
                 layer_cache: Optional[tuple[jax.Array, jax.Array]]):
        cfg = self.config
        mlp_cls = GeluMLP if cfg.preset == "cm3leon" else SwiGLU
        mlp = mlp_cls(hidden_dim=cfg.hidden_dim, init_std=cfg.init_std,
                      zero_init_output=cfg.zero_init_output_projections,
                      dtype=DTYPES[cfg.dtype], param_dtype=DTYPES[cfg.param_dtype],
                      custom_backward=backward_lib.use_custom(cfg.backward, "matmul", cfg.dtype),
                      name="mlp")
        attention = Attention(cfg, name="attention")
        attention_norm, mlp_norm = _norm(cfg, "attention_norm"), _norm(cfg, "mlp_norm")
        if cfg.swin_norm:
            out, new_cache = attention(x, inputs, layer_cache)
            x = x + attention_norm(out)
            x = x + mlp_norm(mlp(x))
        else:
            out, new_cache = attention(attention_norm(x), inputs, layer_cache)
            x = x + out
            x = x + mlp(mlp_norm(x))
        return constrain(x, RESIDUAL_AXES), new_cache


def _block_class(config: ModelConfig, scanned: bool) -> type[nn.Module]:
    if config.remat == "none":
        return Block
    # Inside scan the loop boundary already stops XLA from merging recomputation with the
    # forward pass, so CSE prevention (extra copies) is only needed for unrolled layers.
    return nn.remat(Block, policy=REMAT_POLICIES[config.remat], prevent_cse=not scanned)


class Decoder(nn.Module):
    """The full model; see the module docstring for the call convention."""

    config: ModelConfig

    @nn.compact
    def __call__(self, tokens: jax.Array, segment_ids: Optional[jax.Array] = None,
                 positions: Optional[jax.Array] = None, cache: Optional[KVCache] = None,
                 last_only: bool = False):
        cfg = self.config
        attention_lib.require_supported(cfg.attention)
        dtype, param_dtype = DTYPES[cfg.dtype], DTYPES[cfg.param_dtype]
        positions, inputs = self._block_inputs(tokens, segment_ids, positions, cache)

        embed = TokenEmbedding(cfg.vocab_size, cfg.d_model, cfg.init_std, dtype=dtype,
                               param_dtype=param_dtype, name="embed_tokens")
        x = embed(tokens)
        if cfg.preset == "cm3leon":
            x = x + PositionEmbedding(cfg.max_seq_len, cfg.d_model, cfg.position_init_std,
                                      dtype=dtype, param_dtype=param_dtype,
                                      name="embed_positions")(positions)
        x = constrain(x, RESIDUAL_AXES)

        if cache is not None:
            x, new_keys, new_values = self._cached_layers(x, inputs, cache)
        elif cfg.scan_layers:
            x, _ = self._scanned_layers()(x, inputs, None)
        else:
            block_cls = _block_class(cfg, scanned=False)
            for i in range(cfg.num_layers):
                x, _ = block_cls(cfg, name=f"layers_{i}")(x, inputs, None)

        if last_only:  # e.g. a prefill, which needs only the next token's logits
            x = x[:, -1:]
        x = _norm(cfg, "final_norm")(x)
        custom_backward = backward_lib.use_custom(cfg.backward, "matmul", cfg.dtype)
        if cfg.tie_embeddings:
            logits = embed.attend(x, custom_backward)
        else:
            logits = Projection((cfg.vocab_size,), ("embed", "vocab"), init_std=cfg.init_std,
                                dtype=dtype, param_dtype=param_dtype, out_dtype=jnp.float32,
                                custom_backward=custom_backward, name="lm_head")(x)
        logits = constrain(logits.astype(jnp.float32), ("batch", "length", "vocab"))
        if cache is None:
            return logits
        new_cache = KVCache(keys=new_keys, values=new_values,
                            segment_ids=inputs.key_segment_ids,
                            next_positions=positions[:, -1].astype(jnp.int32) + 1,
                            index=cache.index + tokens.shape[1])
        return logits, new_cache

    def _scanned_layers(self) -> nn.Module:
        scanned = nn.scan(_block_class(self.config, scanned=True), variable_axes={"params": 0},
                          split_rngs={"params": True}, in_axes=(nn.broadcast, 0),
                          length=self.config.num_layers,
                          metadata_params={nn.PARTITION_NAME: "layers"})
        return scanned(self.config, name="layers")

    def _cached_layers(self, x, inputs: BlockInputs, cache: KVCache):
        """The layers unrolled, each on its own cache arrays (see `models/kv_cache.py`: written in
        place, never restacked). Scanned weights are sliced per layer here; a decode loop slices
        them once beforehand instead (`kv_cache.unstack_layers`)."""
        cfg = self.config
        if cfg.scan_layers:
            if self.is_initializing():  # create the stacked weights (the cache is not needed)
                self._scanned_layers()(x, inputs.replace(key_segment_ids=inputs.segment_ids,
                                                         cache_index=None), None)
            stacked = nn.meta.unbox(self.variables["params"]["layers"])
            block = functools.partial(Block, cfg, parent=None)  # an unbound copy per layer
        new_keys, new_values = [], []
        for i in range(cfg.num_layers):
            layer_cache = (cache.keys[i], cache.values[i])
            if cfg.scan_layers:
                weights = jax.tree.map(lambda a, i=i: a[i], stacked)
                x, (k, v) = block().apply({"params": weights}, x, inputs, layer_cache)
            else:
                x, (k, v) = Block(cfg, name=f"layers_{i}")(x, inputs, layer_cache)
            new_keys.append(k)
            new_values.append(v)
        return x, tuple(new_keys), tuple(new_values)

    def _block_inputs(self, tokens, segment_ids, positions, cache):
        cfg = self.config
        batch, length = tokens.shape
        if cache is None:
            if segment_ids is None:
                segment_ids = jnp.ones((batch, length), jnp.int32)
            if positions is None:
                positions = positions_from_segments(segment_ids)
            key_segment_ids, query_slots, cache_index = segment_ids, jnp.arange(length), None
        else:
            cache_index = cache.index
            if segment_ids is None:
                last = jax.lax.dynamic_index_in_dim(cache.segment_ids,
                                                    jnp.maximum(cache_index - 1, 0), axis=1)
                segment_ids = jnp.broadcast_to(jnp.where(cache_index > 0, last, 1),
                                               (batch, length))
            if positions is None:
                continuing = cache.next_positions[:, None] + jnp.arange(length)[None, :]
                positions = jnp.where(cache_index == 0, positions_from_segments(segment_ids),
                                      continuing)
            key_segment_ids = jax.lax.dynamic_update_slice(
                cache.segment_ids, segment_ids.astype(jnp.int32), (0, cache_index))
            query_slots = cache_index + jnp.arange(length)
        rope_cos = rope_sin = None
        if cfg.preset == "chameleon":
            rope_cos, rope_sin = rope_frequencies(positions, cfg.resolved_head_dim, cfg.rope_theta)
        inputs = BlockInputs(segment_ids=segment_ids, key_segment_ids=key_segment_ids,
                             query_slots=query_slots, rope_cos=rope_cos, rope_sin=rope_sin,
                             cache_index=cache_index)
        return positions, inputs


def init_params(config: ModelConfig, rng: jax.Array) -> dict:
    """Plain (unboxed) float parameters on the default device, for single-device use (tests,
    export, small-scale generation). Sharded training creates them with
    `train.state.create_sharded_train_state` (laid out by `train.decoder_task.param_shardings`)
    instead; `Decoder(config).init` returns them boxed with their logical axis names."""
    boxed = Decoder(config).init(rng, jnp.zeros((1, 1), jnp.int32))["params"]
    return nn.meta.unbox(boxed)
