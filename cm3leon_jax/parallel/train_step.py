"""A minimal jitted train step: next-token loss, gradients, one optimizer update.

Kept in small reusable pieces for the training core: `loss_fn` (params, batch -> loss, LossSums),
`train_step` (pure, un-jitted) and `make_train_step` (jit with explicit in/out shardings and the
state donated, so parameters and AdamW moments are updated in place).

A batch is a dict of [batch, length] arrays named as the packer's rows (`data/packing.py`): `ids`
(int32 tokens), optional `segment_ids` (int32, 0 = padding), optional `positions` (int32; default:
restart per segment) and optional `weights` (float32, the weight of predicting `ids[t]`; see
`models/loss.py`).
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import optax
from jax.sharding import Mesh

from cm3leon_jax.models.loss import LossSums, next_token_loss_sums
from cm3leon_jax.parallel import sharding as sharding_lib
from cm3leon_jax.parallel.train_state import TrainState

Batch = Mapping[str, jax.Array]


def loss_fn(params: Any, model: nn.Module, batch: Batch,
            z_loss: float) -> tuple[jax.Array, LossSums]:
    """Mean (cross-entropy + z-loss) over counted tokens, and the sums it came from."""
    logits = model.apply({"params": params}, batch["ids"], batch.get("segment_ids"),
                         batch.get("positions"))
    sums = next_token_loss_sums(logits, batch["ids"], batch.get("segment_ids"),
                                batch.get("weights"), z_loss)
    return sums.total(), sums


def train_step(state: TrainState, batch: Batch, *, model: nn.Module,
               optimizer: optax.GradientTransformation,
               z_loss: float) -> tuple[TrainState, dict[str, jax.Array]]:
    """One update. Metrics: loss, cross_entropy (per token), z_loss, accuracy, tokens, grad_norm."""
    (loss, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, model, batch,
                                                                     z_loss)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    weight = jax.numpy.maximum(sums.weight, 1e-9)
    metrics = {"loss": loss, "cross_entropy": sums.cross_entropy / weight,
               "z_loss": sums.z_loss / weight, "accuracy": sums.correct / weight,
               "tokens": sums.weight, "grad_norm": optax.global_norm(grads)}
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def make_train_step(model: nn.Module, optimizer: optax.GradientTransformation, mesh: Mesh,
                    rules: sharding_lib.Rules, state_shardings: TrainState,
                    z_loss: Optional[float] = None,
                    donate: bool = True) -> sharding_lib.ShardedFunction:
    """`step(state, batch) -> (state, metrics)`, jitted for `mesh` with the state donated."""
    z_loss = model.config.z_loss if z_loss is None else z_loss
    step = functools.partial(train_step, model=model, optimizer=optimizer, z_loss=z_loss)
    jitted = jax.jit(step,
                     in_shardings=(state_shardings, sharding_lib.batch_sharding(mesh, rules)),
                     out_shardings=(state_shardings, sharding_lib.replicated(mesh)),
                     donate_argnums=(0,) if donate else ())
    return sharding_lib.ShardedFunction(jitted, mesh, rules)
