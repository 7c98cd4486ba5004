"""Building blocks of the decoder: projections, norms, MLPs, embeddings and rotary positions.

Every weight is created through `nn.with_logical_partitioning`, so it carries logical axis names
(`embed`, `mlp`, `heads`, `kv_heads`, `head_dim`, `vocab`) that the one rule table in
`config.MeshConfig.rules` maps to mesh axes (`parallel/sharding.py`); the layers themselves know
nothing about meshes. Activations get `constrain(x, names)` hints in the same vocabulary; outside a
mesh context these are no-ops, so the same code runs on one CPU.

Dtype policy: weights are stored in `param_dtype` (float32 for training) and cast to the compute
`dtype` at use; norms, softmax and RoPE run in float32 and cast their result back, because those
are where bfloat16 loses accuracy and they cost no matmul time.
"""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cm3leon_jax.models import matmul

Dtype = jnp.dtype
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def truncated_normal_init(std: float) -> Callable:
    """Normal(0, std) cut at +-3 std (metaseq's `trunc_normal_(std, a=-3std, b=3std)`)."""
    return jax.nn.initializers.truncated_normal(stddev=std, lower=-3.0, upper=3.0)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Sharding hint for an activation, by logical axis names (a no-op without mesh and rules)."""
    return nn.with_logical_constraint(x, tuple(names))


class Projection(nn.Module):
    """A bias-free linear map, one 2-D GEMM (`matmul.contract`: fast-path products forward and
    backward, float32 accumulation in every compute dtype).

    Contracts the last `contract_dims` axes of the input with the first `contract_dims` axes of a
    kernel shaped `input.shape[-contract_dims:] + features`. Keeping heads as their own kernel axis
    ((embed, heads, head_dim) instead of (embed, heads * head_dim)) is what lets the rule table
    shard attention by head.
    """

    features: tuple[int, ...]
    kernel_axes: tuple[str | None, ...]
    contract_dims: int = 1
    init_std: float = 0.006
    zero_init: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    out_dtype: Dtype | None = None  # default: dtype (the output head asks for float32 logits)
    custom_backward: bool = True  # the hand-written matmul VJP (models/backward.py)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel_shape = tuple(x.shape[-self.contract_dims:]) + tuple(self.features)
        init = nn.initializers.zeros_init() if self.zero_init else truncated_normal_init(
            self.init_std)
        kernel = self.param("kernel", nn.with_logical_partitioning(init, self.kernel_axes),
                            kernel_shape, self.param_dtype)
        return matmul.contract(x.astype(self.dtype), jnp.asarray(kernel, self.dtype),
                               self.contract_dims, self.out_dtype, self.custom_backward)


def _normalize(x: jax.Array, eps: float, subtract_mean: bool) -> jax.Array:
    x = x.astype(jnp.float32)
    if subtract_mean:
        x = x - jnp.mean(x, axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)


class LayerNorm(nn.Module):
    """LayerNorm without learnable scale or shift (CM3leon/metaseq): no parameters at all."""

    eps: float = 1e-5
    dtype: Dtype = jnp.float32

    def __call__(self, x: jax.Array) -> jax.Array:
        return _normalize(x, self.eps, subtract_mean=True).astype(self.dtype)


class RMSNorm(nn.Module):
    """RMSNorm with a learned scale, computed like HF Llama/Chameleon (float32 stats, the result
    cast to the compute dtype before the scale is applied)."""

    eps: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones_init(),
                                                                 ("embed",)),
                           (x.shape[-1],), self.param_dtype)
        return _normalize(x, self.eps, subtract_mean=False).astype(self.dtype) * jnp.asarray(
            scale, self.dtype)


class HeadLayerNorm(nn.Module):
    """QK-norm: LayerNorm over each head's vector with a per-head weight and bias.

    Input [..., heads, head_dim]; statistics over head_dim only, then weight/bias of shape
    (heads, head_dim). This is exactly HF `ChameleonLayerNorm` as used by `ChameleonAttention`
    (its `q_norm` / `k_norm`), so weights export one to one.
    """

    heads_axis: str = "heads"
    eps: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = tuple(x.shape[-2:])
        names = (self.heads_axis, "head_dim")
        weight = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones_init(),
                                                                  names), shape, self.param_dtype)
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                               names), shape, self.param_dtype)
        y = _normalize(x, self.eps, subtract_mean=True)
        return (y * jnp.asarray(weight, jnp.float32) + jnp.asarray(bias, jnp.float32)).astype(
            self.dtype)


_SQRT_HALF = 0.7071067811865476


def gelu(x: jax.Array) -> jax.Array:
    """Exact GELU, x * Phi(x) with the erf form of Phi (torch `gelu`, HF OPT `gelu`), in float32.

    Differentiated by JAX: a hand-written one-pass backward was measured no faster on XLA:CPU in
    the whole train step (0.99x float32, 1.00x bfloat16; docs/BENCHMARKS.md, "Backward passes")
    and was removed."""
    x32 = x.astype(jnp.float32)
    return (0.5 * x32 * (1.0 + jax.lax.erf(x32 * _SQRT_HALF))).astype(x.dtype)


class GeluMLP(nn.Module):
    """CM3leon MLP: fc1 -> GELU (exact erf form, as metaseq and HF OPT `gelu`) -> fc2."""

    hidden_dim: int
    init_std: float
    zero_init_output: bool
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    custom_backward: bool = True  # the matmuls' (models/backward.py)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dense = dict(init_std=self.init_std, dtype=self.dtype, param_dtype=self.param_dtype,
                     custom_backward=self.custom_backward)
        h = Projection((self.hidden_dim,), ("embed", "mlp"), name="fc1", **dense)(x)
        h = constrain(gelu(h), ("batch", "length", "mlp"))
        return Projection((x.shape[-1],), ("mlp", "embed"), zero_init=self.zero_init_output,
                          name="fc2", **dense)(h)


class SwiGLU(nn.Module):
    """Chameleon/Llama MLP: down(silu(gate(x)) * up(x))."""

    hidden_dim: int
    init_std: float
    zero_init_output: bool
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    custom_backward: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dense = dict(init_std=self.init_std, dtype=self.dtype, param_dtype=self.param_dtype,
                     custom_backward=self.custom_backward)
        gate = Projection((self.hidden_dim,), ("embed", "mlp"), name="gate_proj", **dense)(x)
        up = Projection((self.hidden_dim,), ("embed", "mlp"), name="up_proj", **dense)(x)
        h = constrain(jax.nn.silu(gate) * up, ("batch", "length", "mlp"))
        return Projection((x.shape[-1],), ("mlp", "embed"), zero_init=self.zero_init_output,
                          name="down_proj", **dense)(h)


class TokenEmbedding(nn.Module):
    """Token embedding table (vocab, embed); `attend` is the tied output projection."""

    vocab_size: int
    features: int
    init_std: float
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        self.embedding = self.param(
            "embedding", nn.with_logical_partitioning(truncated_normal_init(self.init_std),
                                                      ("vocab", "embed")),
            (self.vocab_size, self.features), self.param_dtype)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        # Gather the `embed` axis of the table first (what FSDP does for every weight anyway):
        # a lookup into a table also split along `embed` would come out split along `embed` and
        # need an all-to-all to reach the batch-sharded residual layout.
        table = constrain(jnp.asarray(self.embedding, self.dtype), ("vocab", None))
        return jnp.take(table, tokens, axis=0)

    def attend(self, x: jax.Array, custom_backward: bool = True) -> jax.Array:
        """Float32 logits straight from the float32 accumulator (no round trip through dtype)."""
        return matmul.contract_transposed(x.astype(self.dtype),
                                          jnp.asarray(self.embedding, self.dtype), jnp.float32,
                                          custom_backward)


class PositionEmbedding(nn.Module):
    """Learned absolute position embeddings (cm3leon preset), table (max_seq_len, embed)."""

    max_seq_len: int
    features: int
    init_std: float
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, positions: jax.Array) -> jax.Array:
        table = self.param("embedding", nn.with_logical_partitioning(
            nn.initializers.normal(self.init_std), (None, "embed")),
            (self.max_seq_len, self.features), self.param_dtype)
        return jnp.take(jnp.asarray(table, self.dtype), positions, axis=0)


def rope_frequencies(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, ...]:
    """cos and sin tables [batch, length, head_dim] in float32, HF layout (the frequency vector
    repeated twice, to pair with `rotate_half`)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotary embedding of x [batch, length, heads, head_dim] the HF way (`rotate_half`, halves not
    interleaved pairs), so exported q/k projections need no permutation."""
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * cos[:, :, None, :] + rotated * sin[:, :, None, :]).astype(x.dtype)
