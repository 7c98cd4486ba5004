"""The train state: everything a resumed run needs besides the data position."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: updates attempted (skipped non-finite ones included)
    params: Any
    opt_state: Any
    rng: jax.Array  # base key; each step folds in its step number
    skipped: jax.Array  # int32 scalar: updates dropped because of non-finite loss or gradients

    @classmethod
    def create(cls, params, optimizer: optax.GradientTransformation, rng: jax.Array) -> "TrainState":
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                   rng=rng, skipped=jnp.zeros((), jnp.int32))
