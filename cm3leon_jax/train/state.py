"""The train state (everything a resumed run needs besides the data position) and its creation,
shard by shard, on a mesh.

Nothing is ever materialised unsharded: `state_shardings` derives the layout of the whole state
from the parameters' shardings (AdamW moments mirror the parameter tree, so each moment lives where
its parameter does; step counts, the rng and other scalars are replicated), and
`create_sharded_train_state` runs the initialiser under `jax.jit(out_shardings=...)`, so every
device creates only its own shard. Used by pretraining, instruction tuning and super-resolution
(through `train/loop.py`), by the sharding tests, the multi-host test and the benchmarks.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec


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


def state_shardings(optimizer: optax.GradientTransformation, abstract_params: Any,
                    param_shardings: Any, mesh: jax.sharding.Mesh) -> TrainState:
    """A TrainState of shardings: params as given, every optimizer sub-tree shaped like the
    params (AdamW's mu and nu) laid out like them, everything else (counts, rng) replicated."""
    replicated = NamedSharding(mesh, PartitionSpec())
    params_def = jax.tree.structure(abstract_params)
    abstract_opt = jax.eval_shape(optimizer.init, abstract_params)

    def mirrors_params(node) -> bool:
        return jax.tree.structure(node) == params_def

    opt = jax.tree.map(lambda node: param_shardings if mirrors_params(node) else replicated,
                       abstract_opt, is_leaf=mirrors_params)
    return TrainState(step=replicated, params=param_shardings, opt_state=opt, rng=replicated,
                      skipped=replicated)


def abstract_train_state(init_params: Callable[[jax.Array], Any], param_shardings: Any,
                         optimizer: optax.GradientTransformation, mesh: jax.sharding.Mesh,
                         rng: jax.Array) -> tuple[TrainState, TrainState]:
    """(the state as ShapeDtypeStructs laid out by `state_shardings`, the shardings): what a
    checkpoint restore needs, without allocating a state first (a resumed 7B run must not hold a
    random state and the restored one at once)."""
    abstract_params = jax.eval_shape(init_params, rng)
    shardings = state_shardings(optimizer, abstract_params, param_shardings, mesh)
    shapes = jax.eval_shape(lambda key: TrainState.create(init_params(key), optimizer, key), rng)
    abstract = jax.tree.map(
        lambda shape, sharding: jax.ShapeDtypeStruct(shape.shape, shape.dtype, sharding=sharding),
        shapes, shardings)
    return abstract, shardings


def create_sharded_train_state(init_params: Callable[[jax.Array], Any], param_shardings: Any,
                               optimizer: optax.GradientTransformation, mesh: jax.sharding.Mesh,
                               rng: jax.Array, params: Optional[Any] = None
                               ) -> tuple[TrainState, TrainState]:
    """(state, its shardings): created by one jit whose outputs are laid out by `state_shardings`.

    init_params: rng -> params (unboxed); only traced when `params` is None. params: start from
    these instead (e.g. restored for instruction tuning); they are resharded as needed.
    """
    abstract = jax.eval_shape(init_params, rng)
    shardings = state_shardings(optimizer, abstract, param_shardings, mesh)

    def create(rng, given):
        init_rng, state_rng = jax.random.split(rng)
        chosen = init_params(init_rng) if given is None else given
        return TrainState.create(chosen, optimizer, state_rng)

    state = jax.jit(create, out_shardings=shardings)(rng, params)
    return state, shardings
