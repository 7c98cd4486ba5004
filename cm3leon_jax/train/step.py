"""One jit-able train step for any model: gradient accumulation, non-finite guard, metrics.

The model side supplies `loss_fn(params, batch, rng) -> (loss_sum, sums)`: the *sum* of the
objective over the batch's weighted tokens, and a dict of sums for metrics. `sums["tokens"]` is the
normaliser (the weighted token count). Working with sums is what makes accumulation exact: the
gradient of k micro-batches is the sum of their gradients divided by the total token count, which is
the gradient of one k-times batch (up to float summation order).

Metric convention: for every `<name>_tokens` in `sums`, a `<name>_loss` sum is normalised into
`<name>/loss` and `<name>/perplexity` (e.g. text and image tokens separately); `loss` and
`perplexity` are the overall figures (cross-entropy only); every other sum (`accuracy`, `z_loss`)
is reported per weighted token.

`jit_train_step` is the compiled form every caller uses (the loop, the sharding and multi-host
tests, the benchmarks): explicit in/out shardings, the state donated (params and AdamW moments
updated in place), metrics replicated (readable on every host).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from cm3leon_jax.train.state import TrainState

LossFn = Callable[[object, dict, jax.Array], tuple[jax.Array, dict]]


def split_micro_batches(batch: dict, count: int) -> dict:
    def split(x):
        if x.shape[0] % count:
            raise ValueError(f"batch of {x.shape[0]} rows does not split into {count} micro-batches")
        return x.reshape(count, x.shape[0] // count, *x.shape[1:])

    return jax.tree.map(split, batch)


def accumulate_gradients(loss_fn: LossFn, params, batch: dict, rng: jax.Array,
                         micro_batches: int) -> tuple[object, dict]:
    """(sum of gradients, sum of `sums`) over micro-batches, scanned (one compiled body)."""
    grad_fn = jax.grad(loss_fn, has_aux=True)
    if micro_batches == 1:
        return grad_fn(params, batch, rng)
    micro = split_micro_batches(batch, micro_batches)

    def body(carry, inputs):
        grads_sum, sums_sum = carry
        index, micro_batch = inputs
        grads, sums = grad_fn(params, micro_batch, jax.random.fold_in(rng, index))
        return (jax.tree.map(jnp.add, grads_sum, grads),
                jax.tree.map(jnp.add, sums_sum, sums)), None

    zero_grads = jax.tree.map(jnp.zeros_like, params)
    first = jax.tree.map(lambda x: x[0], micro)
    zero_sums = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                             jax.eval_shape(lambda: loss_fn(params, first, rng)[1]))
    (grads, sums), _ = jax.lax.scan(body, (zero_grads, zero_sums),
                                    (jnp.arange(micro_batches), micro))
    return grads, sums


def summarize(sums: dict) -> dict:
    """Normalised metrics from sums (see module docstring)."""
    metrics = {}
    tokens = jnp.maximum(sums["tokens"], 1.0)
    metrics["loss"] = sums["loss"] / tokens
    metrics["perplexity"] = jnp.exp(jnp.minimum(metrics["loss"], 30.0))
    metrics["tokens"] = sums["tokens"]
    for key, value in sums.items():
        if key in ("loss", "tokens"):
            continue
        if key.endswith("_tokens"):
            name = key[: -len("_tokens")]
            if f"{name}_loss" in sums:
                loss = sums[f"{name}_loss"] / jnp.maximum(value, 1.0)
                metrics[f"{name}/loss"] = loss
                metrics[f"{name}/perplexity"] = jnp.exp(jnp.minimum(loss, 30.0))
                metrics[f"{name}/tokens"] = value
        elif not (key.endswith("_loss") and f"{key[:-len('_loss')]}_tokens" in sums):
            metrics[key] = value / tokens  # e.g. accuracy, z_loss: per weighted token
    return metrics


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule, micro_batches: int = 1):
    """Returns `train_step(state, batch) -> (state, metrics)`, to be wrapped in `jax.jit`.

    A step whose loss or gradient norm is not finite leaves params and optimizer state untouched
    (the step counter still advances, `skipped` counts it); the loop decides whether to stop.
    """

    def train_step(state: TrainState, batch: dict):
        rng = jax.random.fold_in(state.rng, state.step)
        grads, sums = accumulate_gradients(loss_fn, state.params, batch, rng, micro_batches)
        tokens = jnp.maximum(sums["tokens"], 1.0)
        grads = jax.tree.map(lambda g: g / tokens.astype(g.dtype), grads)
        grad_norm = optax.global_norm(grads)
        metrics = summarize(sums)
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
        updates, new_opt_state = optimizer.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
        metrics.update(grad_norm=grad_norm, learning_rate=schedule(state.step),
                       finite=finite.astype(jnp.float32),
                       param_norm=optax.global_norm(state.params))
        new_state = state.replace(step=state.step + 1,
                                  params=keep(new_params, state.params),
                                  opt_state=keep(new_opt_state, state.opt_state),
                                  skipped=state.skipped + (~finite).astype(jnp.int32))
        return new_state, metrics

    return train_step


def jit_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation,
                   schedule: optax.Schedule, state_shardings: TrainState,
                   batch_sharding: jax.sharding.NamedSharding, micro_batches: int = 1,
                   donate: bool = True):
    """`make_train_step` jitted for the mesh of `batch_sharding`: `step(state, batch)`."""
    replicated = jax.sharding.NamedSharding(batch_sharding.mesh, jax.sharding.PartitionSpec())
    return jax.jit(make_train_step(loss_fn, optimizer, schedule, micro_batches),
                   in_shardings=(state_shardings, batch_sharding),
                   out_shardings=(state_shardings, replicated),
                   donate_argnums=(0,) if donate else ())


def make_eval_step(loss_fn: LossFn):
    """Returns `eval_step(params, batch) -> sums` (sum them over batches, then `summarize`)."""

    def eval_step(params, batch: dict):
        _, sums = loss_fn(params, batch, jax.random.key(0))
        return sums

    return eval_step
