"""The platform a program is traced for: this process's JAX backend, or the one it is lowered for.

Backend-specific choices made while tracing (the attention kernel and Pallas interpret mode, the
hand-written backward passes `auto` keeps, the KV cache's dtype) read `backend()`. Lowering on
this machine for another platform with `jax.export` (`parallel/lowering.py`) traces inside
`lowering_for("tpu")`, so the program holds what that platform would run, not this CPU's choices.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

import jax

# jax.export platform names -> jax.default_backend() names.
EXPORT_PLATFORMS = {"cpu": "cpu", "cuda": "gpu", "rocm": "gpu", "tpu": "tpu"}
_TARGET: contextvars.ContextVar = contextvars.ContextVar("cm3leon_jax_target", default=None)


def backend() -> str:
    """"cpu", "gpu" or "tpu": the backend being traced for."""
    return _TARGET.get() or jax.default_backend()


@contextlib.contextmanager
def lowering_for(platform: str) -> Iterator[str]:
    """Traces inside run as for `platform` (a jax.export name: cpu, cuda, rocm, tpu)."""
    if platform not in EXPORT_PLATFORMS:
        raise ValueError(f"unknown platform {platform!r}; one of {', '.join(EXPORT_PLATFORMS)}")
    token = _TARGET.set(EXPORT_PLATFORMS[platform])
    try:
        yield EXPORT_PLATFORMS[platform]
    finally:
        _TARGET.reset(token)
