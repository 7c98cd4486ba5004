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
* `splash`: the Pallas splash-attention kernel shipped in jax
  (`jax.experimental.pallas.ops.tpu.splash_attention`): a causal `MultiHeadMask` plus `SegmentIds`
  for packed documents, computed tile by tile (`splash_block` tokens a side; tiles above the
  diagonal are skipped, whole tiles of one segment need no mask), so no [T, T] score matrix ever
  exists: memory O(T) per head, forward and backward. Grouped-query attention is native (the MHA
  kernel takes [kv_heads, T, d] keys for [heads, T, d] queries). The kernel works on one
  sequence's [heads, T, d], so it is vmapped over the batch, and under a mesh it runs inside
  `shard_map` over the mesh axes the rule table gives `batch` and `heads`/`kv_heads` (each
  device runs it on its own sequences and heads; nothing else is communicated). The kernel does
  not scale q by 1/sqrt(d): `_splash` does. On TPU it is compiled by Mosaic; on CPU it runs in
  Pallas interpret mode (slow, for tests: same tiling, same numbers, same memory profile).
* `auto`: per backend, `select_implementation`: TPU splash, GPU cudnn (16-bit compute), else xla;
  where the kernel's shape rules do not hold (e.g. a sequence that is not a multiple of 128) it
  quietly takes xla. A sequence shorter than one 128-token tile (e.g. the (1, 1) dummy batch that
`Decoder.init` traces) is a single tile with nothing to skip: it takes xla as well.

Decoding with a KV cache (explicit `query_slots` / `key_slots`) always takes the xla path,
whatever the configured choice: the splash mask is static (built in numpy when the kernel is
made) while the cache's query offset `cache.index` is a traced value; a decode step has a single
query per row, which the kernel's 128-row query tiles cannot hold, and whose scores are one
[kv_len] row anyway (no O(T^2) buffer for a kernel to avoid). Prefill into a cache likewise.

`require_supported` rejects an implementation the current backend cannot run, with a
`ConfigError`, before anything is traced or compiled; `select_implementation` rejects, while the
model is traced (before compile), a shape the explicitly chosen kernel cannot tile, saying what
to change.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name
from jax.sharding import PartitionSpec

from cm3leon_jax.config import (ATTENTION_IMPLEMENTATIONS, SPLASH_HEAD_DIM_MULTIPLE,
                                SPLASH_SEQ_MULTIPLE, ConfigError)
from cm3leon_jax.models import platform

# Backends each implementation runs on (platform.backend() names). splash on CPU runs the
# kernel in Pallas interpret mode (tests, parity, compile-time memory analysis).
SUPPORTED_BACKENDS = {"auto": ("cpu", "gpu", "tpu"), "xla": ("cpu", "gpu", "tpu"),
                      "cudnn": ("gpu",), "splash": ("tpu", "cpu")}
_BACKEND_ADVICE = {"cudnn": "use 'xla' or 'auto' here",
                   "splash": "use 'cudnn', 'xla' or 'auto' here"}
# Largest first: the splash tile side is the largest of these that divides the sequence.
SPLASH_BLOCKS = (512, 256, 128)
# Name of the attention output for remat policies (the custom VJP hides its dots from them).
CHECKPOINT_NAME = "attention"
# A finite "minus infinity": exp() of it is exactly 0, and a masked row can never become NaN.
MASKED_LOGIT = -0.7 * float(jnp.finfo(jnp.float32).max)


def require_supported(implementation: str, backend: Optional[str] = None) -> None:
    """Raises ConfigError when `implementation` is unknown or cannot run on `backend`."""
    if implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ConfigError(f"config.model.attention={implementation!r}: must be one of "
                          f"{', '.join(map(repr, ATTENTION_IMPLEMENTATIONS))}")
    backend = backend or platform.backend()
    allowed = SUPPORTED_BACKENDS[implementation]
    if backend not in allowed:
        raise ConfigError(
            f"config.model.attention={implementation!r}: runs only on {', '.join(allowed)} "
            f"backends, and this process's JAX backend is {backend!r}; "
            f"{_BACKEND_ADVICE[implementation]}")


def splash_problem(q_len: int, kv_len: int, head_dim: int) -> Optional[str]:
    """Why the splash kernel cannot tile this self-attention, or None when it can."""
    if q_len != kv_len:
        return (f"it runs causal self-attention only, and the queries ({q_len}) and keys "
                f"({kv_len}) differ in length")
    if q_len % SPLASH_SEQ_MULTIPLE:
        return (f"it tiles sequences in blocks of {SPLASH_SEQ_MULTIPLE} tokens, and this one is "
                f"{q_len} long; make the training sequence length (data.seq_len / --seq_len) a "
                f"multiple of {SPLASH_SEQ_MULTIPLE}, or use 'xla' or 'auto'")
    if head_dim % SPLASH_HEAD_DIM_MULTIPLE:
        return (f"it tiles heads of a multiple of {SPLASH_HEAD_DIM_MULTIPLE} wide, and head_dim "
                f"is {head_dim}; change model.head_dim (or d_model / num_heads), or use 'xla' or "
                f"'auto'")
    return None


def select_implementation(implementation: str, *, q_len: int, kv_len: int, head_dim: int,
                          dtype: Any = jnp.float32, self_attention: bool = True,
                          backend: Optional[str] = None) -> str:
    """The implementation that actually runs one `attention()` call: `auto` resolved per backend,
    every KV-cache call (`self_attention=False`) on `xla` (see the module docstring). Raises
    ConfigError (before compile) when an explicit `splash` cannot tile the shape."""
    require_supported(implementation, backend)
    if not self_attention:
        return "xla"
    backend = backend or platform.backend()
    if implementation == "auto":
        if backend == "tpu" and not splash_problem(q_len, kv_len, head_dim):
            return "splash"
        if backend == "gpu" and jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16),
                                                      jnp.dtype(jnp.float16)):
            return "cudnn"
        return "xla"
    if implementation == "splash":
        if q_len < SPLASH_SEQ_MULTIPLE:
            return "xla"
        problem = splash_problem(q_len, kv_len, head_dim)
        if problem:
            raise ConfigError(f"config.model.attention='splash': {problem}")
    return implementation


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
    """The textbook form, differentiated by JAX (`config.model.backward`, models/backward.py)."""
    scores = _masked_scores(_grouped(query, key.shape[2]), key, mask, scale)
    probs = jax.nn.softmax(scores, axis=-1).astype(value.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, value)
    return out.reshape(query.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _xla_attention(query, key, value, mask, scale):
    """Attention with a FlashAttention-style backward pass: the forward keeps only its inputs,
    its output and the softmax log-normaliser per query (no [q_len, kv_len] probabilities); the
    backward recomputes the probabilities from them and uses rowsum(dO * O) in place of the
    rowsum(dP * P) reduction over kv_len. Same numbers as `_xla_attention_autodiff`; measured
    (benchmarks/backward_passes.py, XLA:CPU): the train step 1.06x faster in float32 and 1.16x in
    bfloat16 than with autodiff attention, and 2.3 GB less step temporaries at 8k tokens (a
    saving that holds on every backend), so `model.backward=auto` uses it everywhere."""
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


def _blockwise_causal_xla(query, key, value, segment_ids, blocks, scale, core):
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
        outputs.append(core(query[:, start:end], key[:, :end], value[:, :end], mask, scale))
    return checkpoint_name(jnp.concatenate(outputs, axis=1), CHECKPOINT_NAME)


def splash_block(length: int) -> int:
    """Side of the splash kernel's square tiles for a sequence of `length` (forward and both
    backward kernels): the largest of SPLASH_BLOCKS that divides it."""
    return next(block for block in SPLASH_BLOCKS if length % block == 0)


def _splash_kernel(heads: int, length: int, interpret: bool):
    """A splash kernel for one sequence: causal over `length`, `heads` query heads (kv heads are
    read off the key's shape). Made afresh in every trace (its mask tables become constants of
    that trace; a kernel kept across traces would leak them); jax caches the numpy work of
    processing the mask, so this costs well under a millisecond after the first time."""
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    block = splash_block(length)
    sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                              block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                              block_q_dq=block, block_kv_dq=block)
    mask = splash.MultiHeadMask([splash.CausalMask((length, length))] * heads)
    return splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                                  interpret=interpret)


def splash_attention_local(query: jax.Array, key: jax.Array, value: jax.Array,
                           query_segment_ids: jax.Array, key_segment_ids: jax.Array,
                           interpret: Optional[bool] = None) -> jax.Array:
    """The splash kernel on arrays that are all on one device (no mesh): query
    [batch, T, heads, d], key/value [batch, T, kv_heads, d], segment ids [batch, T]. `interpret`
    defaults to Pallas interpret mode everywhere but on TPU."""
    if interpret is None:
        interpret = platform.backend() != "tpu"
    kernel = _splash_kernel(query.shape[2], query.shape[1], interpret)
    from jax.experimental.pallas.ops.tpu.splash_attention import SegmentIds

    scale = query.shape[-1] ** -0.5  # the kernel does not scale: q * 1/sqrt(d) here

    def one_sequence(q, k, v, q_segments, kv_segments):
        return kernel(q, k, v, segment_ids=SegmentIds(q=q_segments, kv=kv_segments))

    heads_major = lambda x: jnp.swapaxes(x, 1, 2)  # [batch, heads, T, d]
    out = jax.vmap(one_sequence)(heads_major(query * jnp.asarray(scale, query.dtype)),
                                 heads_major(key), heads_major(value), query_segment_ids,
                                 key_segment_ids)
    return heads_major(out).astype(query.dtype)


def _mesh_axes(entry) -> tuple[str, ...]:
    return () if entry is None else tuple(entry) if isinstance(entry, (tuple, list)) else (entry,)


def splash_partition_specs(mesh_shape: dict[str, int], rules, batch: int, heads: int,
                           kv_heads: int) -> tuple[PartitionSpec, PartitionSpec, PartitionSpec]:
    """(query / output, key / value, segment ids) specs for the splash `shard_map`: batch and
    heads split as the rule table says, restricted to axes of this mesh that divide them; heads
    only when query and kv heads split over the same axes (so each device keeps whole groups)."""

    def axes(logical_names, position, size):
        entry = nn.logical_to_mesh_axes(logical_names, rules)[position] if rules else None
        names = tuple(a for a in _mesh_axes(entry) if a in mesh_shape)
        if not names or size % int(np.prod([mesh_shape[a] for a in names])):
            return None
        return names[0] if len(names) == 1 else names

    batch_axes = axes(("batch", "length", "heads", "head_dim"), 0, batch)
    head_axes = axes(("batch", "length", "heads", "head_dim"), 2, heads)
    kv_head_axes = axes(("batch", "length", "kv_heads", "head_dim"), 2, kv_heads)
    if head_axes != kv_head_axes:
        head_axes = kv_head_axes = None
    return (PartitionSpec(batch_axes, None, head_axes, None),
            PartitionSpec(batch_axes, None, kv_head_axes, None),
            PartitionSpec(batch_axes, None))


def _splash(query, key, value, query_segment_ids, key_segment_ids):
    """splash on the current mesh (`jax.set_mesh`, with the flax logical axis rules active), or
    on one device without one."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return splash_attention_local(query, key, value, query_segment_ids, key_segment_ids)
    q_spec, kv_spec, segment_spec = splash_partition_specs(
        dict(mesh.shape), nn.get_logical_axis_rules(), query.shape[0], query.shape[2],
        key.shape[2])
    sharded = jax.shard_map(splash_attention_local, mesh=mesh,
                            in_specs=(q_spec, kv_spec, kv_spec, segment_spec, segment_spec),
                            out_specs=q_spec, check_vma=False)
    return sharded(query, key, value, query_segment_ids, key_segment_ids)


def _jax_nn_attention(query, key, value, mask, scale, implementation):
    return jax.nn.dot_product_attention(query, key, value, mask=mask[:, None, :, :], scale=scale,
                                        implementation=implementation)


def attention(query: jax.Array, key: jax.Array, value: jax.Array, *,
              query_segment_ids: jax.Array, key_segment_ids: jax.Array,
              query_slots: Optional[jax.Array] = None, key_slots: Optional[jax.Array] = None,
              implementation: str = "xla", custom_backward: bool = True) -> jax.Array:
    """Scaled dot-product attention, causal by slot and blocked across segments.

    query [batch, q_len, heads, head_dim]; key, value [batch, kv_len, kv_heads, head_dim] with
    heads % kv_heads == 0 (grouped-query attention when kv_heads < heads). Default slots place the
    queries at the end of the keys (q_len == kv_len: ordinary causal self-attention).
    Returns [batch, q_len, heads, head_dim] in the query dtype. `custom_backward` picks the
    xla path's hand-written VJP (`_xla_attention`) or autodiff of the textbook form
    (`models/backward.py`).
    """
    q_len, kv_len = query.shape[1], key.shape[1]
    if query.shape[2] % key.shape[2]:
        raise ValueError(f"query heads ({query.shape[2]}) must be a multiple of key/value heads "
                         f"({key.shape[2]})")
    scale = query.shape[-1] ** -0.5
    self_attention = query_slots is None and key_slots is None and q_len == kv_len
    implementation = select_implementation(
        implementation, q_len=q_len, kv_len=kv_len, head_dim=query.shape[-1], dtype=query.dtype,
        self_attention=self_attention)
    if implementation == "splash":
        return checkpoint_name(_splash(query, key, value, query_segment_ids, key_segment_ids),
                               CHECKPOINT_NAME)
    core = _xla_attention if custom_backward else _xla_attention_autodiff
    if implementation == "xla" and self_attention and causal_query_blocks(q_len) > 1:
        return _blockwise_causal_xla(query, key, value, query_segment_ids,
                                     causal_query_blocks(q_len), scale, core)
    if query_slots is None:
        query_slots = jnp.arange(q_len) + (kv_len - q_len)
    if key_slots is None:
        key_slots = jnp.arange(kv_len)
    mask = attention_mask(query_segment_ids, key_segment_ids, query_slots, key_slots)
    if implementation == "xla":
        return checkpoint_name(core(query, key, value, mask, scale), CHECKPOINT_NAME)
    return _jax_nn_attention(query, key, value, mask, scale, implementation)
