"""The weight matmuls of the model, written for XLA:CPU's fast GEMM paths in every dtype.

Measured on jaxlib 0.10.2 (XLA:CPU with YNNPACK), 2048-sized products:

* bfloat16 x bfloat16 -> float32 runs in YNNPACK's bfloat16 kernels (AMX where the CPU has it:
  several times the float32 rate), while bfloat16 x bfloat16 -> bfloat16 is converted to a
  float32 GEMM, slower than float32 itself. So a bfloat16 product accumulates in float32
  (`preferred_element_type`) and is cast back. A custom VJP keeps the input-gradient product in
  the same form (autodiff would feed it float32 cotangents: a float32 GEMM again).
* XLA:CPU hands a dot to YNNPACK only when its left operand contracts its minor (last)
  dimension: [M, K] x [K, N] or [M, K] x [N, K]; every forward and input-gradient product here
  has one of these shapes. The weight gradient x^T g contracts the token dimension, the major one
  of both operands, and runs as an Eigen dot; Eigen has no bfloat16 x bfloat16 -> float32 kernel
  ("Unsupported element type for DotThunk"), so its operands are float32. Materialising x^T to
  reach YNNPACK instead was measured slower: XLA:CPU's transpose of a [4096, 2048] activation
  costs more than the GEMM gains.

The custom VJP (`matmul`) is used where it was measured faster: XLA:CPU in bfloat16 compute,
where the whole train step of benchmarks/backward_passes.py runs 1.15x faster with it than with
JAX's autodiff of the same forward (`matmul_autodiff`). In float32 on CPU it was slower (0.93x),
and GPU/TPU have their own GEMM paths: `config.model.backward=auto` (models/backward.py) takes
`matmul_autodiff` there.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.ad_checkpoint import checkpoint_name

# Remat policies see a custom VJP as one opaque call, not as a dot: outputs are tagged with this
# name so the `dots_*` policies in decoder.py can still choose to keep them.
CHECKPOINT_NAME = "projection"

_CONTRACT_LAST_WITH_FIRST = (((1,), (0,)), ((), ()))  # [M, K] x [K, N]
_CONTRACT_LAST_WITH_LAST = (((1,), (1,)), ((), ()))  # [M, K] x [N, K]


def _product(a, b, b_transposed: bool, out_dtype):
    dims = _CONTRACT_LAST_WITH_LAST if b_transposed else _CONTRACT_LAST_WITH_FIRST
    return lax.dot_general(a, b, dims, preferred_element_type=jnp.float32).astype(out_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def matmul(a: jax.Array, b: jax.Array, b_transposed: bool = False,
           out_dtype: jnp.dtype | None = None) -> jax.Array:
    """a [M, K] times b [K, N] (or b [N, K] with b_transposed): [M, N] in `out_dtype` (default:
    a's dtype), accumulated in float32, with the VJP described in the module docstring."""
    return _product(a, b, b_transposed, out_dtype or a.dtype)


def _matmul_fwd(a, b, b_transposed, out_dtype):
    return matmul(a, b, b_transposed, out_dtype), (a, b)


def _matmul_bwd(b_transposed, out_dtype, residuals, g):
    del out_dtype
    a, b = residuals
    g = g.astype(a.dtype)
    # d a = g b^T: [M, N] x [N, K] (b given as [N, K]) or [M, N] x [K, N] (b given as [K, N]).
    # The barrier keeps XLA:CPU from fusing this GEMM with the reductions of the norm backward
    # that consumes it: YNNPACK runs such a fused graph several times slower than the two parts.
    d_a = lax.optimization_barrier(_product(g, b, not b_transposed, a.dtype))
    # d b = a^T g contracts the token dimension M, the major one of both operands: XLA:CPU runs
    # that as an Eigen dot, which has no bfloat16 x bfloat16 -> float32 kernel, so it gets
    # float32 operands (exact, and the weight gradient is float32 anyway).
    d_b = lax.dot_general(a.astype(jnp.float32), g.astype(jnp.float32),
                          (((0,), (0,)), ((), ())))
    return d_a, (d_b.T if b_transposed else d_b).astype(b.dtype)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


def matmul_autodiff(a: jax.Array, b: jax.Array, b_transposed: bool = False,
                    out_dtype: jnp.dtype | None = None) -> jax.Array:
    """`matmul` with JAX's own VJP (`config.model.backward`, models/backward.py)."""
    return _product(a, b, b_transposed, out_dtype or a.dtype)


def contract(x: jax.Array, kernel: jax.Array, contract_dims: int = 1,
             out_dtype: jnp.dtype | None = None, custom_backward: bool = True) -> jax.Array:
    """x [..., C...] times kernel [C..., F...] over the C dims (the last `contract_dims` of x):
    [..., F...] in `out_dtype` (default x's dtype), via one 2-D `matmul` (`matmul_autodiff`
    without `custom_backward`)."""
    batch_shape = x.shape[:x.ndim - contract_dims]
    features = kernel.shape[contract_dims:]
    inner = 1
    for size in kernel.shape[:contract_dims]:
        inner *= size
    product = matmul if custom_backward else matmul_autodiff
    out = product(x.reshape(-1, inner), kernel.reshape(inner, -1), False, out_dtype)
    return checkpoint_name(out.reshape(*batch_shape, *features), CHECKPOINT_NAME)


def contract_transposed(x: jax.Array, table: jax.Array, out_dtype: jnp.dtype | None = None,
                        custom_backward: bool = True) -> jax.Array:
    """x [..., D] times table [V, D]^T: [..., V] (the tied output projection)."""
    product = matmul if custom_backward else matmul_autodiff
    out = product(x.reshape(-1, x.shape[-1]), table, True, out_dtype)
    return checkpoint_name(out.reshape(*x.shape[:-1], table.shape[0]), CHECKPOINT_NAME)
