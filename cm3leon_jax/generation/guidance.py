"""Classifier-free guidance and contrastive decoding (TopK) on one step's logits.

Both need two views of the same next token: the *conditional* stream (the real prompt) and the
*unconditional* one (the same prompt with its text condition replaced by `<mask>`; see
`prompts.py` for what exactly is replaced). The decoder runs them as one batch (rows
`[0, B)` conditional, `[B, 2B)` unconditional) that receives the same sampled token every step, so
both caches stay aligned and one forward pass per step serves both.

CFG (CM3leon / Make-A-Scene): logits = u + alpha (c - u). alpha = 1 is the conditional stream
exactly; alpha > 1 pushes away from what the model would draw without the text.

CD-K (the CM3leon paper's TopK variant of contrastive decoding, Li et al. 2022): the expert's
plausible set V = {x : p_exp(x) >= alpha * kmax_k p_exp} (the k-th largest probability, where
Li et al. use the maximum, k = 1), scored log p_exp(x) - log p_ama(x) with the unconditional
stream as the amateur; tokens outside V get -inf. The expert is the (guided, constrained)
distribution actually being sampled from, so CD-K composes with CFG; the scores then go through
the usual temperature / top-k / top-p sampling (temperature 0 = Li et al.'s greedy search).

Both are applied at image-code positions only (`decode.py`): the paper uses them for image
tokens, and text positions of an image prompt (`<eoi>`, a caption) have no condition to
contrast. All functions are pure; -inf logits (tokens removed by a modality constraint) stay
-inf and never turn into NaN.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cm3leon_jax.generation.sampling import NEG_INF


def classifier_free_guidance(cond_logits: jax.Array, uncond_logits: jax.Array, scale
                             ) -> jax.Array:
    """u + scale (c - u); exactly `cond_logits` when scale == 1 (`where`, not arithmetic, so
    no rounding when guidance is off)."""
    guided = uncond_logits + jnp.asarray(scale, cond_logits.dtype) * (cond_logits - uncond_logits)
    return jnp.where(jnp.asarray(scale) == 1, cond_logits, guided)


def cdk_candidates(expert_logits: jax.Array, k: int, alpha) -> jax.Array:
    """bool [..., vocab]: expert probability >= alpha * (k-th largest expert probability)."""
    probs = jax.nn.softmax(expert_logits, axis=-1)
    k = max(1, min(int(k), expert_logits.shape[-1]))
    kth = jax.lax.top_k(probs, k)[0][..., -1:]
    return probs >= jnp.asarray(alpha, probs.dtype) * kth


def contrastive_logits(expert_logits: jax.Array, amateur_logits: jax.Array, k: int, alpha
                       ) -> jax.Array:
    """CD-K scores: log p_exp - log p_ama on the candidates, -inf elsewhere."""
    candidates = cdk_candidates(expert_logits, k, alpha)
    expert = jax.nn.log_softmax(expert_logits, axis=-1)
    amateur = jax.nn.log_softmax(amateur_logits, axis=-1)
    # The decoder masks expert and amateur with the same allowed set, so a candidate's amateur
    # log-prob is finite; should a caller pass an amateur with -inf on a candidate, the token
    # scores very high (the amateur rules it out entirely: the contrastive choice) instead of NaN.
    score = expert - jnp.where(jnp.isfinite(amateur), amateur, -1e30)
    return jnp.where(candidates, score, NEG_INF)
