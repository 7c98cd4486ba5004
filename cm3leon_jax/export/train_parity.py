"""Our trainer against torch autograd on the exported transformers model: gradients and loss curves.

The forward pass is checked by `verify.py`; this module checks what training adds on top of it:
the hand-written backward passes (weight matmuls, GELU, attention, the loss), the CM3 and SFT
loss weights, z-loss, gradient accumulation, AdamW with its weight-decay mask, the warmup + decay
schedule and global-norm clipping. Used by the parity tests and `benchmarks/train_parity.py`.

The torch side is written from the recipe, not from our code: the loss is the weighted next-token
cross-entropy plus `z_loss * log(Z)^2` computed on transformers' logits (Chameleon: before the
image-logit masking of its `forward`), the optimizer is `torch.optim.AdamW` with parameter groups
chosen by transformers' names (matrices decay; embeddings, norms and 1-d tensors do not), the
schedule a `LambdaLR` of the formula, clipping `torch.nn.utils.clip_grad_norm_`.

transformers cannot express packed rows (several documents in one row, kept apart by segment
ids), so torch sees `unpack_rows`' one-document-per-row form; that our packed rows give the same
gradients as their unpacked form is checked on our side.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cm3leon_jax.config import ModelConfig, TrainConfig

BATCH_KEYS = ("ids", "segment_ids", "positions", "weights")


# --------------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------------

def unpack_rows(batch: dict, pad_id: int, seq_len: Optional[int] = None) -> dict:
    """One document per row: every segment of every packed row becomes its own row (right-padded
    with `pad_id`, segment 0, weight 0), in order; all-padding rows are dropped (they carry no
    weight). Positions restart at 0 per row, as the packer writes them per segment."""
    seq_len = seq_len or batch["ids"].shape[1]
    rows = {key: [] for key in BATCH_KEYS}
    for row in range(batch["ids"].shape[0]):
        segments = batch["segment_ids"][row]
        for segment in [s for s in np.unique(segments) if s != 0]:
            where = np.flatnonzero(segments == segment)
            if not np.all(np.diff(where) == 1):
                raise ValueError(f"segment {segment} of row {row} is not contiguous")
            length = len(where)
            ids = np.full((seq_len,), pad_id, np.int32)
            ids[:length] = batch["ids"][row, where]
            weights = np.zeros((seq_len,), np.float32)
            weights[:length] = batch["weights"][row, where]
            segment_ids = np.zeros((seq_len,), np.int32)
            segment_ids[:length] = 1
            positions = np.zeros((seq_len,), np.int32)
            positions[:length] = np.arange(length)
            if not np.array_equal(batch["positions"][row, where], positions[:length]):
                raise ValueError(f"positions of segment {segment} of row {row} do not restart at 0")
            for key, value in zip(BATCH_KEYS, (ids, segment_ids, positions, weights)):
                rows[key].append(value)
    return {key: np.stack(value) for key, value in rows.items()}


def take_batches(dataset, count: int) -> list[dict]:
    """The first `count` numpy batches of a tf.data pipeline (`data/input/pipeline.py`)."""
    out = []
    for batch in dataset.as_numpy_iterator():
        out.append({key: np.asarray(batch[key]) for key in BATCH_KEYS})
        if len(out) == count:
            break
    if len(out) < count:
        raise ValueError(f"the pipeline gave {len(out)} batches, {count} were asked for")
    return out


def concatenate(batches: Sequence[dict]) -> dict:
    return {key: np.concatenate([b[key] for b in batches]) for key in BATCH_KEYS}


# --------------------------------------------------------------------------------------------------
# Our side
# --------------------------------------------------------------------------------------------------

def our_loss_and_grads(params, model: ModelConfig, batch: dict, image_range: tuple[int, int],
                       micro_batches: int = 1) -> tuple[float, dict]:
    """(objective per unit weight, gradients of it) exactly as the train step computes them:
    `decoder_task.make_loss_fn` sums, accumulated over `micro_batches`, divided by the weight."""
    from cm3leon_jax.train import decoder_task, step  # noqa: PLC0415

    loss_fn = decoder_task.make_loss_fn(model, image_range)

    @jax.jit
    def run(p, b):
        grads, sums = step.accumulate_gradients(loss_fn, p, b, jax.random.key(0), micro_batches)
        tokens = jnp.maximum(sums["tokens"], 1.0)
        objective = (sums["loss"] + sums["z_loss"]) / tokens
        return objective, jax.tree.map(lambda g: g / tokens, grads)

    objective, grads = run(params, {k: jnp.asarray(v) for k, v in batch.items()})
    return float(objective), jax.device_get(grads)


def grads_by_hf_name(grads, model: ModelConfig) -> dict[str, np.ndarray]:
    """Our gradient pytree laid out as transformers' state dict (the export's own table)."""
    from cm3leon_jax.export.param_sources import InMemoryParams  # noqa: PLC0415
    from cm3leon_jax.export.hf_export import stream_tensors  # noqa: PLC0415

    return dict(stream_tensors(model, InMemoryParams(grads), np.dtype(np.float32)))


class _FixedBatches:
    """A `loop.DataIterator` over a list of batches already on the mesh."""

    def __init__(self, batches: Sequence[dict], sharding):
        self._batches = [{k: jax.device_put(jnp.asarray(v), sharding) for k, v in b.items()}
                         for b in batches]
        self._next = 0

    def __next__(self) -> dict:
        batch = self._batches[self._next % len(self._batches)]
        self._next += 1
        return batch

    def get_state(self) -> dict:
        return {"next": self._next}

    def set_state(self, state: dict) -> None:
        self._next = int(state["next"])


def our_loss_curve(params, model: ModelConfig, train: TrainConfig, batches: Sequence[dict],
                   image_range: tuple[int, int], workdir: str) -> list[float]:
    """The loss at every step of `train.steps` steps of our training loop (`train/loop.py`: the
    optimizer, schedule, clipping and accumulation of `train`) from `params`, on `batches` in
    order, one device. The loss of step n is the one its update was computed from."""
    from cm3leon_jax.config import MeshConfig  # noqa: PLC0415
    from cm3leon_jax.parallel import mesh as mesh_lib, sharding  # noqa: PLC0415
    from cm3leon_jax.train import decoder_task, loop  # noqa: PLC0415

    mesh = mesh_lib.make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    rules = MeshConfig().logical_axis_rules()
    batch_sharding = sharding.batch_sharding(mesh, rules)
    fixed = jax.tree.map(np.asarray, params)
    task = loop.Task(
        name="parity", init_params=lambda rng: jax.tree.map(jnp.asarray, fixed),
        param_shardings=lambda abstract: decoder_task.param_shardings(model, mesh, rules),
        batch_sharding=batch_sharding, loss_fn=decoder_task.make_loss_fn(model, image_range),
        train_data=_FixedBatches(batches, batch_sharding),
        context=lambda: sharding.sharding_context(mesh, rules))
    train = dataclasses.replace(train, log_every=1, eval_every=0, checkpoint_every=train.steps,
                                async_checkpoints=False, keep_best=False)
    loop.train(train, workdir, task)
    log = loop.read_train_log(workdir)
    return [log[step]["loss"] + log[step]["z_loss"] for step in range(1, train.steps + 1)]


# --------------------------------------------------------------------------------------------------
# The torch side
# --------------------------------------------------------------------------------------------------

def hf_logits_for_training(hf_model, ids, attention_mask):
    """transformers' logits with autograd, every id allowed (Chameleon's `forward` sets the
    image-code logits to the float minimum for text-only generation; training needs them)."""
    if hf_model.config.model_type == "chameleon":
        hidden = hf_model.model(input_ids=ids, attention_mask=attention_mask).last_hidden_state
        return hf_model.lm_head(hidden)
    return hf_model(input_ids=ids, attention_mask=attention_mask).logits


def torch_objective(hf_model, batch: dict, z_loss: float):
    """(objective per unit weight as a torch scalar with autograd, the weight) for one-document
    rows (`unpack_rows`): the recipe's loss written out. Position t's logits predict token t + 1
    with weight `weights[t + 1]`, counted only where both tokens are real (not padding)."""
    import torch  # noqa: PLC0415

    ids = torch.as_tensor(np.asarray(batch["ids"]), dtype=torch.long)
    real = torch.as_tensor(np.asarray(batch["segment_ids"]) != 0)
    if not torch.all(real[:, :-1] | ~real[:, 1:]):
        raise ValueError("torch rows must be right-padded (one document per row)")
    dtype = torch.float64 if hf_model.dtype == torch.float64 else torch.float32
    logits = hf_logits_for_training(hf_model, ids, real.long()).to(dtype)[:, :-1]
    targets = ids[:, 1:]
    weights = torch.as_tensor(np.asarray(batch["weights"]), dtype=dtype)[:, 1:]
    weights = weights * (real[:, 1:] & real[:, :-1]).to(dtype)
    log_z = torch.logsumexp(logits, dim=-1)
    target_logit = torch.gather(logits, -1, targets[..., None])[..., 0]
    total = ((log_z - target_logit) * weights).sum() + z_loss * (log_z.square() * weights).sum()
    weight = weights.sum()
    return total / weight.clamp_min(1.0), float(weight)


def torch_loss_and_grads(hf_model, batch: dict, z_loss: float) -> tuple[float, dict]:
    """(objective, {HF name: gradient}) by torch autograd."""
    hf_model.zero_grad(set_to_none=True)
    objective, _ = torch_objective(hf_model, batch, z_loss)
    objective.backward()
    grads = {}
    for name, param in hf_model.named_parameters():
        if param.grad is not None:
            grads[name] = param.grad.detach().numpy().copy()
    return float(objective.detach()), grads


def lr_multiplier(train: TrainConfig, step: int) -> float:
    """The schedule as a multiple of `train.lr` at optimizer step `step` (0-based): linear warmup
    from 0 over `warmup_steps`, then cosine / linear decay to `end_lr_fraction` at `steps`."""
    if step < train.warmup_steps:
        return step / train.warmup_steps
    end = train.end_lr_fraction
    if train.decay == "constant":
        return 1.0
    decay_steps = max(1, train.steps - train.warmup_steps)
    progress = min(step - train.warmup_steps, decay_steps) / decay_steps
    if train.decay == "cosine":
        return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 + (end - 1.0) * progress


def _decays(name: str, param, train: TrainConfig) -> bool:
    """Weight decay by transformers' names: matrices yes; embeddings and norms only when asked."""
    if "embed" in name:
        return train.decay_embeddings
    if "norm" in name or param.dim() < 2:
        return train.decay_norms and param.dim() >= 1
    return True


def torch_optimizer(hf_model, train: TrainConfig):
    """(torch AdamW with the recipe's groups, its LambdaLR schedule)."""
    import torch  # noqa: PLC0415

    decay, no_decay, seen = [], [], set()
    for name, param in hf_model.named_parameters():
        if id(param) in seen:  # tied lm_head / embed_tokens: one parameter
            continue
        seen.add(id(param))
        (decay if _decays(name, param, train) else no_decay).append(param)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": train.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=train.lr, betas=(train.b1, train.b2), eps=train.eps)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                 lambda step: lr_multiplier(train, step))
    return optimizer, schedule


def torch_loss_curve(hf_model, train: TrainConfig, batches: Sequence[dict],
                     z_loss: float) -> list[float]:
    """The loss at every step of `train.steps` steps of torch training (one-document rows), in
    the model's dtype (float64 after `hf_model.double()`: the reference's own rounding floor)."""
    import torch  # noqa: PLC0415

    hf_model.train()
    optimizer, schedule = torch_optimizer(hf_model, train)
    losses = []
    for step in range(train.steps):
        optimizer.zero_grad(set_to_none=True)
        objective, _ = torch_objective(hf_model, batches[step % len(batches)], z_loss)
        objective.backward()
        if train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(hf_model.parameters(), train.grad_clip)
        optimizer.step()
        schedule.step()
        losses.append(float(objective.detach()))
    return losses


# --------------------------------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------------------------------

def relative_errors(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray]
                    ) -> dict[str, float]:
    """Per tensor: |ours - theirs| / |theirs| (Frobenius norms; 0 when both are exactly zero).
    Tensors torch has no gradient for (never used, e.g. OPT's two unused position rows) must be
    zero on our side too."""
    out = {}
    for name, mine in ours.items():
        other = theirs.get(name)
        if other is None:
            other = np.zeros_like(mine)
        if mine.shape != other.shape:
            raise ValueError(f"{name}: our gradient is {mine.shape}, torch's {other.shape}")
        difference = float(np.linalg.norm((mine - other).ravel()))
        scale = float(np.linalg.norm(other.ravel()))
        out[name] = 0.0 if difference == 0.0 else difference / max(scale, 1e-30)
    missing = sorted(set(theirs) - set(ours))
    if missing:
        raise ValueError(f"torch has gradients for tensors we do not export: {missing[:4]}")
    return out


def max_relative_difference(ours: Iterable[float], theirs: Iterable[float]) -> float:
    ours, theirs = np.asarray(list(ours)), np.asarray(list(theirs))
    return float(np.max(np.abs(ours - theirs) / np.abs(theirs)))
