"""Peak FLOP/s per device for the MFU figure: a table for accelerators, a measurement on CPU."""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp

# Dense bf16 peak per chip/GPU, from the vendors' data sheets.
PEAK_BF16_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100": 312e12,
}


@functools.lru_cache(maxsize=None)
def measured_matmul_flops(size: int = 1024, dtype: str = "float32", repeats: int = 20) -> float:
    """FLOP/s of a jitted square matmul on the default device (the honest CPU 'peak').

    The fastest of `repeats` single products, not their mean: on a machine shared with other jobs
    the mean measures the load at start-up, and a step that later runs on a quieter machine then
    reported an MFU above 100% (seen: 188% on the 2-core CPU). The best single product is what the
    hardware can do when this process has it, the right denominator for a utilisation."""
    a = jnp.ones((size, size), dtype)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def peak_flops_per_device(configured: float = 0.0) -> float:
    if configured > 0:
        return configured
    kind = jax.devices()[0].device_kind
    for name, flops in PEAK_BF16_FLOPS.items():
        if kind.startswith(name):
            return flops
    return measured_matmul_flops()
