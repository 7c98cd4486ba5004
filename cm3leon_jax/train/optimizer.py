"""AdamW with warmup + decay, global-norm clipping and a weight-decay mask, from `config.train`."""

from __future__ import annotations

import jax
import optax

from cm3leon_jax.config import TrainConfig

_EMBEDDING_NAMES = ("embed", "embedding", "wte", "wpe", "position")
_NORM_NAMES = ("norm", "ln", "layernorm", "rmsnorm", "scale")


def warmup_cosine(peak: float, warmup_steps: int, total_steps: int,
                  end_fraction: float = 0.0) -> optax.Schedule:
    """Linear warmup from 0 to `peak`, then cosine decay to `peak * end_fraction` at total_steps.

    The one warmup + cosine schedule of every trainer (decoder loop, VQ-GAN, retrieval bi-encoder),
    so their learning rates cannot drift apart; equal to optax.warmup_cosine_decay_schedule.
    """
    decay = optax.cosine_decay_schedule(peak, max(1, total_steps - warmup_steps),
                                        alpha=end_fraction)
    if warmup_steps == 0:
        return decay
    warmup = optax.linear_schedule(0.0, peak, warmup_steps)
    return optax.join_schedules([warmup, decay], [warmup_steps])


def learning_rate(train: TrainConfig) -> optax.Schedule:
    """Linear warmup from 0 to `lr`, then cosine / linear decay to `lr * end_lr_fraction`."""
    if train.decay == "cosine":
        return warmup_cosine(train.lr, train.warmup_steps, train.steps, train.end_lr_fraction)
    end = train.lr * train.end_lr_fraction
    decay_steps = max(1, train.steps - train.warmup_steps)
    if train.decay == "linear":
        decay = optax.linear_schedule(train.lr, end, decay_steps)
    else:
        decay = optax.constant_schedule(train.lr)
    if train.warmup_steps == 0:
        return decay
    warmup = optax.linear_schedule(0.0, train.lr, train.warmup_steps)
    return optax.join_schedules([warmup, decay], [train.warmup_steps])


def _path_names(path) -> list[str]:
    return [str(getattr(key, "key", getattr(key, "name", key))).lower() for key in path]


def weight_decay_mask(params, train: TrainConfig):
    """True where weight decay applies: matrices, not biases; embeddings / norms only if asked."""

    def decays(path, leaf) -> bool:
        names = _path_names(path)
        if any(any(tag in name for tag in _EMBEDDING_NAMES) for name in names):
            return train.decay_embeddings
        if leaf.ndim <= 1 or any(any(tag in name for tag in _NORM_NAMES) for name in names):
            return train.decay_norms and leaf.ndim >= 1
        return True

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(train: TrainConfig) -> optax.GradientTransformation:
    parts = []
    if train.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(train.grad_clip))
    parts.append(optax.adamw(learning_rate(train), b1=train.b1, b2=train.b2, eps=train.eps,
                             weight_decay=train.weight_decay,
                             mask=lambda params: weight_decay_mask(params, train)))
    return optax.chain(*parts)
