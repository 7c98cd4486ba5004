"""Vector quantizer: encoder vectors -> nearest codebook entries, with straight-through gradients.

Two orthogonal choices (config `vqgan.codebook_lookup`, `vqgan.codebook_update`):

* lookup `cosine` L2-normalises encoder outputs and codes before the nearest-neighbour search
  (ViT-VQGAN): every code lies on the unit sphere, so no code can drift far from the data and die;
  lookup `l2` is VQ-VAE's Euclidean search.
* update `loss` trains the codebook as a parameter with the codebook loss ||sg(z) - e||^2; update
  `ema` sets each code to the moving average of the encoder outputs assigned to it (VQ-VAE-2),
  which needs no codebook gradient and keeps the codebook on the data's scale.

Both use the commitment loss beta * ||z - sg(e)||^2. Codes unused for `restart_unused_after`
training steps are re-initialised from random encoder outputs of the batch
(`restart_dead_codes`), the fix for codebook collapse used by Jukebox and ViT-VQGAN.

Variables: the codebook lives in `params` (update `loss`) or in the `vq_state` collection
(update `ema`, with `ema_count` and `ema_sum`); `vq_state/unused_steps` counts, per code, the
training steps since it was last chosen.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

STATE = "vq_state"


class Quantized(NamedTuple):
    """What the quantizer returns for encoder vectors z [..., d]."""

    straight_through: jax.Array  # z + sg(e - z): forward value e, gradient of z
    codes: jax.Array  # int32 [...]: index of the chosen code
    loss: jax.Array  # scalar: commitment (+ codebook) loss
    encoder_vectors: jax.Array  # z as compared with the codebook (normalised for `cosine`)
    code_counts: jax.Array  # float32 [K]: how often each code was chosen in this call
    errors: jax.Array  # float32 [...]: squared distance of each vector to its code


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-6) -> jax.Array:
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=axis, keepdims=True) + eps)


def nearest_codes(vectors: jax.Array, codebook: jax.Array) -> jax.Array:
    """Index of the nearest code (Euclidean) for each row of vectors [N, d]; codebook [K, d].

    ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2; ||z||^2 is the same for every code and dropped. For
    unit vectors this is the cosine lookup.
    """
    scores = vectors @ codebook.T - 0.5 * jnp.sum(codebook * codebook, axis=-1)[None, :]
    return jnp.argmax(scores, axis=-1).astype(jnp.int32)


def perplexity(code_counts: jax.Array) -> jax.Array:
    """exp(entropy) of the code histogram: the number of equally used codes it corresponds to."""
    probs = code_counts / jnp.maximum(jnp.sum(code_counts), 1.0)
    entropy = -jnp.sum(jnp.where(probs > 0, probs * jnp.log(jnp.where(probs > 0, probs, 1.0)), 0.0))
    return jnp.exp(entropy)


def _codebook_init(normalize: bool):
    def init(rng: jax.Array, shape: tuple[int, int]) -> jax.Array:
        # Uniform in +-1/K as in VQ-VAE; on the sphere for cosine lookup.
        table = jax.random.uniform(rng, shape, jnp.float32, -1.0 / shape[0], 1.0 / shape[0])
        return l2_normalize(table) if normalize else table
    return init


class VectorQuantizer(nn.Module):
    codebook_size: int
    code_dim: int
    lookup: str = "cosine"
    update: str = "loss"
    ema_decay: float = 0.99
    commitment_cost: float = 0.25

    @property
    def normalize(self) -> bool:
        return self.lookup == "cosine"

    def setup(self) -> None:
        shape = (self.codebook_size, self.code_dim)
        init = _codebook_init(self.normalize)
        if self.update == "loss":
            self.table = self.param("codebook", init, shape)
        else:
            self.table_variable = self.variable(
                STATE, "codebook", lambda: init(self.make_rng("params"), shape))
            self.ema_count = self.variable(STATE, "ema_count",
                                           lambda: jnp.ones((self.codebook_size,), jnp.float32))
            # A copy: one buffer twice in the state would break buffer donation.
            self.ema_sum = self.variable(STATE, "ema_sum",
                                         lambda: jnp.copy(self.table_variable.value))
        self.unused_steps = self.variable(STATE, "unused_steps",
                                          lambda: jnp.zeros((self.codebook_size,), jnp.int32))

    def codebook(self) -> jax.Array:
        """The current code table [K, d] (normalised for cosine lookup)."""
        table = self.table if self.update == "loss" else self.table_variable.value
        return l2_normalize(table) if self.normalize else table

    def __call__(self, z: jax.Array, train: bool = False) -> Quantized:
        if z.shape[-1] != self.code_dim:
            raise ValueError(f"quantizer expects vectors of size code_dim={self.code_dim}, "
                             f"got shape {z.shape}")
        z = z.astype(jnp.float32)
        if self.normalize:
            z = l2_normalize(z)
        codebook = self.codebook()

        flat = z.reshape(-1, self.code_dim)
        codes = nearest_codes(jax.lax.stop_gradient(flat), codebook)
        one_hot = jax.nn.one_hot(codes, self.codebook_size, dtype=jnp.float32)
        counts = jnp.sum(one_hot, axis=0)
        chosen = codebook[codes]

        commitment = jnp.mean(jnp.square(flat - jax.lax.stop_gradient(chosen)))
        loss = self.commitment_cost * commitment
        if self.update == "loss":
            loss = loss + jnp.mean(jnp.square(jax.lax.stop_gradient(flat) - chosen))

        if train and not self.is_initializing():
            self.unused_steps.value = jnp.where(counts > 0, 0, self.unused_steps.value + 1)
            if self.update == "ema":
                decay = self.ema_decay
                self.ema_count.value = decay * self.ema_count.value + (1 - decay) * counts
                self.ema_sum.value = decay * self.ema_sum.value + (1 - decay) * (
                    one_hot.T @ jax.lax.stop_gradient(flat))
                # Laplace smoothing keeps rarely chosen codes finite.
                total = jnp.sum(self.ema_count.value)
                smoothed = ((self.ema_count.value + 1e-5)
                            / (total + self.codebook_size * 1e-5) * total)
                table = self.ema_sum.value / smoothed[:, None]
                self.table_variable.value = l2_normalize(table) if self.normalize else table

        straight_through = flat + jax.lax.stop_gradient(chosen - flat)
        errors = jnp.sum(jnp.square(jax.lax.stop_gradient(flat - chosen)), axis=-1)
        return Quantized(straight_through.reshape(z.shape), codes.reshape(z.shape[:-1]), loss,
                         z, counts, errors.reshape(z.shape[:-1]))


def restart_dead_codes(params: dict[str, Any], vq_state: dict[str, Any], update: str,
                       normalize: bool, encoder_vectors: jax.Array, rng: jax.Array,
                       after_steps: int, errors: jax.Array | None = None
                       ) -> tuple[dict[str, Any], dict[str, Any], jax.Array]:
    """Re-initialises codes unused for >= after_steps from random rows of encoder_vectors [N, d].

    Rows are drawn uniformly, or, given `errors` (each row's squared distance to its code), with
    probability proportional to it: k-means++'s seeding rule, which sends revived codes to the
    vectors the codebook serves worst (rare content such as small objects) instead of to the
    dominant background. `params` and `vq_state` are the quantizer's own subtrees. Returns the new
    subtrees and the number of restarted codes. Works under jit on sharded arrays.
    A restarted code of update `loss` keeps its Adam moments; after `after_steps` steps without
    gradient they have decayed to ~0, so the fresh code starts clean.
    """
    unused = vq_state["unused_steps"]
    dead = unused >= after_steps
    vectors = jax.lax.stop_gradient(encoder_vectors.reshape(-1, encoder_vectors.shape[-1]))
    if errors is None:
        picks = jax.random.randint(rng, unused.shape, 0, vectors.shape[0])
    else:
        weights = jax.lax.stop_gradient(errors.reshape(-1))
        picks = jax.random.categorical(rng, jnp.log(weights + 1e-12), shape=unused.shape)
    replacement = vectors[picks]
    if normalize:
        replacement = l2_normalize(replacement)
    mask = dead[:, None]
    params, vq_state = dict(params), dict(vq_state)
    if update == "loss":
        params["codebook"] = jnp.where(mask, replacement, params["codebook"])
    else:
        vq_state["codebook"] = jnp.where(mask, replacement, vq_state["codebook"])
        vq_state["ema_sum"] = jnp.where(mask, replacement, vq_state["ema_sum"])
        vq_state["ema_count"] = jnp.where(dead, 1.0, vq_state["ema_count"])
    vq_state["unused_steps"] = jnp.where(dead, 0, unused)
    return params, vq_state, jnp.sum(dead)
