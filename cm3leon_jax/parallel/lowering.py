"""Accelerator programs lowered on any machine: does the TPU / GPU program even build?

    exported = export_train_step(cfg, "tpu", mesh_config, batch_size=8, seq_len=4096)
    exported = export_decode_step(cfg, "cuda", mesh_config, batch_size=16, max_len=4096)

`jax.export` lowers a jitted function for another platform from abstract shapes alone, so a
CPU-only machine (with `--xla_force_host_platform_device_count=8` fake devices for the mesh)
finds what would otherwise fail on a paid slice: a Pallas block that does not divide a shape, a
kernel called outside `shard_map`, a sharding that does not fit. Nothing is allocated: the train
state is `ShapeDtypeStruct`s laid out by the training shardings (`train/state.py`), and the step is
the training loop's own (`train/step.jit_train_step`: loss, gradients, AdamW update, donated
state). Tracing runs inside `models.platform.lowering_for(platform)`, so every backend-specific
choice (attention kernel and Pallas interpret mode, hand-written backward passes, KV cache dtype)
is the target's, not this machine's.

`state_bytes_per_device` reads what one device holds of the train state from an exported step's
own input shapes and shardings, and `compile_train_step` compiles the same step for this
process's backend, whose memory analysis `python -m cm3leon_jax.plan --machine ... --lowered`
reports (`parallel/memory_plan.py`).

The decode step is one KV-cache step of generation (`generation/decode.py` runs it in a loop):
one new token per row against a cache of `max_len` slots, params laid out as in training.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections

from cm3leon_jax import config as config_lib
from cm3leon_jax.config import MeshConfig, ModelConfig
from cm3leon_jax.models import kv_cache, platform
from cm3leon_jax.models.decoder import Decoder
from cm3leon_jax.parallel import mesh as mesh_lib, sharding
from cm3leon_jax.train import decoder_task, optimizer, state as state_lib, step as step_lib


def _model(cfg: ml_collections.ConfigDict, attention: Optional[str]) -> ModelConfig:
    model = config_lib.model_config(cfg)
    if attention:
        model = dataclasses.replace(model, attention=attention)
        model.check("model")
    return model


def _train_step(cfg: ml_collections.ConfigDict, target: str, mesh_config: MeshConfig, lower, *,
                batch_size: int, seq_len: int, attention: Optional[str] = None):
    """`lower(step, state, batch)` of the sharded train step of `cfg`'s model, optimizer and
    mesh, traced for `target` with the train state and batch abstract and laid out."""
    model = _model(cfg, attention)
    train = config_lib.train_config(cfg)
    mesh = mesh_lib.make_mesh(mesh_config)
    rules = mesh_config.logical_axis_rules()
    sharding.sequences_per_shard(batch_size, dict(mesh.shape), rules)
    with platform.lowering_for(target):
        shardings = decoder_task.param_shardings(model, mesh, rules)
        tx = optimizer.make_optimizer(train)
        init = functools.partial(decoder_task.init_params, model)
        abstract, state_shardings = state_lib.abstract_train_state(
            init, shardings, tx, mesh, jax.random.key(0))
        batch_sharding = sharding.batch_sharding(mesh, rules)
        image_range = (model.vocab_size // 2, model.vocab_size)
        step = step_lib.jit_train_step(decoder_task.make_loss_fn(model, image_range), tx,
                                       optimizer.learning_rate(train), state_shardings,
                                       batch_sharding, train.micro_batches)
        batch = {name: jax.ShapeDtypeStruct((batch_size, seq_len), dtype, sharding=batch_sharding)
                 for name, dtype in (("ids", jnp.int32), ("segment_ids", jnp.int32),
                                     ("positions", jnp.int32), ("weights", jnp.float32))}
        with sharding.sharding_context(mesh, rules):
            return lower(step, abstract, batch)


def export_train_step(cfg: ml_collections.ConfigDict, target: str, mesh_config: MeshConfig, *,
                      batch_size: int, seq_len: int, attention: Optional[str] = None
                      ) -> jax.export.Exported:
    """The sharded train step of `cfg`'s model, optimizer and mesh, lowered for `target`."""
    return _train_step(cfg, target, mesh_config,
                       lambda step, state, batch: jax.export.export(
                           step, platforms=(target,))(state, batch),
                       batch_size=batch_size, seq_len=seq_len, attention=attention)


def compile_train_step(cfg: ml_collections.ConfigDict, mesh_config: MeshConfig, *,
                       batch_size: int, seq_len: int) -> jax.stages.Compiled:
    """The same train step compiled for this process's own backend and devices (fake CPU
    devices included): `.memory_analysis()` is that compiler's buffer assignment."""
    target = {"gpu": "cuda"}.get(jax.default_backend(), jax.default_backend())
    return _train_step(cfg, target, mesh_config,
                       lambda step, state, batch: step.lower(state, batch).compile(),
                       batch_size=batch_size, seq_len=seq_len)


def state_bytes_per_device(exported: jax.export.Exported,
                           mesh_config: MeshConfig) -> dict[str, int]:
    """Bytes one device holds of each top-level input of an exported train step (`params`,
    `opt_state`, `step`, `rng`, ..., `batch`), read from the program's own input shapes and
    shardings: the layout the target would run, not the plan's arithmetic."""
    shardings = exported.in_shardings_jax(mesh_lib.make_mesh(mesh_config))
    where = jax.tree_util.tree_unflatten(exported.in_tree, range(len(exported.in_avals)))
    (state, batch), _ = where
    result: dict[str, int] = {}
    groups = [(field.name, getattr(state, field.name)) for field in dataclasses.fields(state)]
    for name, indices in groups + [("batch", batch)]:
        result[name] = sum(
            math.prod(shardings[i].shard_shape(exported.in_avals[i].shape))
            * exported.in_avals[i].dtype.itemsize for i in jax.tree.leaves(indices))
    return result


def export_decode_step(cfg: ml_collections.ConfigDict, target: str, mesh_config: MeshConfig, *,
                       batch_size: int, max_len: int, attention: Optional[str] = None
                       ) -> jax.export.Exported:
    """One KV-cache decoding step (a token per row, `max_len` cache slots), lowered for
    `target` with the params laid out as in training."""
    model = _model(cfg, attention)
    mesh = mesh_lib.make_mesh(mesh_config)
    rules = mesh_config.logical_axis_rules()
    with platform.lowering_for(target):
        shardings = decoder_task.param_shardings(model, mesh, rules)
        params = jax.tree.map(
            lambda shape, where: jax.ShapeDtypeStruct(shape.shape, shape.dtype, sharding=where),
            jax.eval_shape(functools.partial(decoder_task.init_params, model),
                           jax.random.key(0)), shardings)
        cache = jax.eval_shape(lambda: kv_cache.init_cache(model, batch_size, max_len))
        tokens = jax.ShapeDtypeStruct((batch_size, 1), jnp.int32)
        decoder = Decoder(model)

        def decode_step(params, tokens, cache):
            return decoder.apply({"params": params}, tokens, None, None, cache=cache,
                                 last_only=True)

        with sharding.sharding_context(mesh, rules):
            return jax.export.export(jax.jit(decode_step), platforms=(target,))(
                params, tokens, cache)
