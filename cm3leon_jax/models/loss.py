"""Next-token cross-entropy (+ z-loss) returned as sums and counts, never as means.

Sums compose: gradient accumulation, several hosts and several data-parallel shards each add their
sums, and the step divides once by the total weight. A mean per micro-batch would weight short and
long micro-batches wrongly.

Convention: the model reads `tokens` [batch, length] and its logits at position t predict token
t + 1. The prediction of token t + 1 counts with weight `loss_weights[:, t + 1]` (the weight
belongs to the *target* token, which is how SFT masks the prompt: zero weight on prompt tokens),
and only when tokens t and t + 1 are in the same non-padding segment (a packed document's first
token is never predicted from the previous document). The last position predicts nothing. This is
the packer's row convention (`data/input/packing.py`: `weights[t]` weighs the prediction of `ids[t]`).

z-loss (Chameleon; PaLM): `z_loss * log(Z)^2` per counted token, Z the softmax normaliser; it keeps
log Z near 0 so bfloat16 logits stay well conditioned.
"""

from __future__ import annotations

from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class LossSums:
    cross_entropy: jax.Array  # sum over counted tokens of -log p(target)
    z_loss: jax.Array  # sum over counted tokens of z_loss * log(Z)^2
    weight: jax.Array  # sum of the weights of counted tokens
    correct: jax.Array  # weighted count of argmax == target

    def __add__(self, other: "LossSums") -> "LossSums":
        return jax.tree.map(jnp.add, self, other)

    def total(self) -> jax.Array:
        """(cross-entropy + z-loss) per unit weight; 0 when nothing was counted."""
        return (self.cross_entropy + self.z_loss) / jnp.maximum(self.weight, 1e-9)


def next_token_targets(tokens: jax.Array, segment_ids: Optional[jax.Array] = None,
                       loss_weights: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
    """Targets [batch, length] (token t + 1 at t) and their float32 weights (0: not counted)."""
    if segment_ids is None:
        segment_ids = jnp.ones_like(tokens)
    weights = jnp.ones(tokens.shape, jnp.float32) if loss_weights is None else loss_weights
    same_document = (segment_ids[:, 1:] == segment_ids[:, :-1]) & (segment_ids[:, 1:] != 0)
    target_weights = weights[:, 1:].astype(jnp.float32) * same_document
    pad = ((0, 0), (0, 1))
    return jnp.pad(tokens[:, 1:], pad), jnp.pad(target_weights, pad)


def _is_target(logits: jax.Array, targets: jax.Array) -> jax.Array:
    return jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1) == \
        targets[..., None]


def log_z_and_target_logit_autodiff(logits: jax.Array, targets: jax.Array
                                    ) -> tuple[jax.Array, jax.Array]:
    """`log_z_and_target_logit` with JAX's own VJP (`config.model.backward`,
    models/backward.py)."""
    log_z = jax.nn.logsumexp(logits, axis=-1)
    return log_z, jnp.sum(jnp.where(_is_target(logits, targets), logits, 0.0), axis=-1)


@jax.custom_vjp
def log_z_and_target_logit(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(log of the softmax normaliser, logit of the target) per token, float32.

    A custom VJP so the backward pass keeps only the logits and log Z (it recomputes the softmax),
    not the float32 [..., vocab] exponentials and masks autodiff would store: measured 1.1 GB less
    step temporaries at a 32,768 vocabulary and 8,192 tokens (benchmarks/backward_passes.py's
    model; time on XLA:CPU unchanged, 0.96-1.03x), so `model.backward=auto` uses it everywhere.
    The target logit is picked by comparing the vocabulary index with the target and summing, not by
    a gather, so a vocabulary sharded over the `tensor` mesh axis reduces locally and all-reduces one number per token.
    """
    return log_z_and_target_logit_autodiff(logits, targets)


def _log_z_and_target_logit_fwd(logits, targets):
    log_z, target_logit = log_z_and_target_logit(logits, targets)
    return (log_z, target_logit), (logits, targets, log_z)


def _log_z_and_target_logit_bwd(residuals, cotangents):
    logits, targets, log_z = residuals
    d_log_z, d_target_logit = cotangents
    probs = jnp.exp(logits - log_z[..., None])
    d_logits = d_log_z[..., None] * probs + jnp.where(_is_target(logits, targets),
                                                      d_target_logit[..., None], 0.0)
    return d_logits, None


log_z_and_target_logit.defvjp(_log_z_and_target_logit_fwd, _log_z_and_target_logit_bwd)


def cross_entropy_sums(logits: jax.Array, targets: jax.Array, weights: jax.Array,
                       z_loss: float = 0.0) -> LossSums:
    """Weighted cross-entropy of logits [..., vocab] against integer targets [...], in float32."""
    logits = logits.astype(jnp.float32)
    log_z, target_logit = log_z_and_target_logit(logits, targets)
    weights = weights.astype(jnp.float32)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return LossSums(cross_entropy=jnp.sum((log_z - target_logit) * weights),
                    z_loss=jnp.sum(z_loss * jnp.square(log_z) * weights),
                    weight=jnp.sum(weights), correct=jnp.sum(correct * weights))


def next_token_loss_sums(logits: jax.Array, tokens: jax.Array,
                         segment_ids: Optional[jax.Array] = None,
                         loss_weights: Optional[jax.Array] = None,
                         z_loss: float = 0.0) -> LossSums:
    """`cross_entropy_sums` of the decoder's logits for `tokens` under the convention above."""
    targets, weights = next_token_targets(tokens, segment_ids, loss_weights)
    return cross_entropy_sums(logits, targets, weights, z_loss)
