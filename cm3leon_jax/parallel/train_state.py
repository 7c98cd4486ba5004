"""A sharded train state: step, params and optimizer state, created directly on the mesh.

Nothing is ever materialised unsharded: `jax.eval_shape` of the init function gives the abstract
state with its logical names (the AdamW moments inherit their parameter's names, since optax
builds them with `tree_map` over the boxed parameters), the rule table turns those into
shardings, and `jax.jit(init, out_shardings=...)` makes every device create only its shard.
The training core (schedules, accumulation, checkpoints) builds on `create_sharded_train_state`
with its own optax optimizer; `adamw` here is the plain recipe used by tests and benchmarks.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from cm3leon_jax.models import attention as attention_lib
from cm3leon_jax.parallel import sharding as sharding_lib

DECAYED_PARAM_NAMES = ("kernel", "embedding")


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # [] int32
    params: Any
    opt_state: Any


def decay_mask(params: Any) -> Any:
    """True for weight matrices and embeddings (decayed), False for norm scales and biases."""

    def is_decayed(path, _):
        names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
        return bool(names) and names[-1] in DECAYED_PARAM_NAMES

    return jax.tree_util.tree_map_with_path(is_decayed, params)


def adamw(learning_rate: float | optax.Schedule, b1: float = 0.9, b2: float = 0.95,
          eps: float = 1e-8, weight_decay: float = 0.1) -> optax.GradientTransformation:
    """AdamW (two float32 moments per parameter), weight decay on matrices and embeddings only."""
    return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                       mask=decay_mask)


def init_train_state(model: nn.Module, optimizer: optax.GradientTransformation,
                     rng: jax.Array) -> TrainState:
    """The boxed (logically annotated) initial state; call under eval_shape or jit."""
    tokens = jnp.zeros((1, 1), jnp.int32)
    params = model.init(rng, tokens)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(params))


def train_state_shardings(model: nn.Module, optimizer: optax.GradientTransformation,
                          mesh: Mesh, rules: sharding_lib.Rules) -> tuple[Any, TrainState]:
    """(abstract unboxed state, its NamedShardings); checks every dimension divides its axes."""
    boxed = jax.eval_shape(functools.partial(init_train_state, model, optimizer),
                           jax.random.key(0))
    shardings = sharding_lib.logical_shardings(sharding_lib.logical_specs(boxed), mesh, rules)
    abstract = nn.meta.unbox(boxed)
    sharding_lib.check_divisible(abstract, shardings)
    return abstract, shardings


def create_sharded_train_state(model: nn.Module, optimizer: optax.GradientTransformation,
                               mesh: Mesh, rules: sharding_lib.Rules,
                               rng: jax.Array) -> tuple[TrainState, TrainState]:
    """(state, state shardings): the initial state created shard by shard on `mesh`."""
    attention_lib.require_supported(model.config.attention)
    _, shardings = train_state_shardings(model, optimizer, mesh, rules)

    def init(rng):
        return nn.meta.unbox(init_train_state(model, optimizer, rng))

    create = sharding_lib.ShardedFunction(jax.jit(init, out_shardings=shardings), mesh, rules)
    return create(rng), shardings
