"""Turning next-token logits into a token: temperature, top-k, top-p (nucleus), greedy.

Pure functions on float32 logits `[..., vocab]`, usable inside `jit` / `lax.while_loop`. A filter
never changes the logits it keeps; it sets the others to `-inf`, so filters compose in any order
and the sampler (`sample_categorical`) never picks a removed token. The order the decoder uses
is Hugging Face's: temperature, then top-k, then top-p (`process`), so `--temperature 0.7
--top_p 0.9` means the same thing here as in `transformers`' `generate`.

Ties: both filters keep every token whose logit is >= the threshold logit, so tied tokens are kept
or dropped together (a filter never breaks a tie by token id, which would bias toward low ids).
`top_k` may therefore keep more than k tokens when the k-th largest value is tied.

`temperature == 0` means greedy decoding (argmax); it is handled by `choose`, not by dividing by 0.

Both the nucleus filter and the draw avoid a sort or a random number per vocabulary entry (see
their docstrings): on CPU those cost more than the model's whole decode step at batch 16.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np

from cm3leon_jax.config import SamplingConfig

NEG_INF = -jnp.inf


def apply_temperature(logits: jax.Array, temperature) -> jax.Array:
    """logits / temperature (temperature > 0; greedy is `choose`'s job)."""
    return logits / jnp.asarray(temperature, logits.dtype)


def top_k_filter(logits: jax.Array, k: int) -> jax.Array:
    """Keeps the tokens whose logit is >= the k-th largest (k static; k <= 0 or >= vocab: all)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits >= kth, logits, NEG_INF)


def top_p_filter(logits: jax.Array, p) -> jax.Array:
    """Nucleus filter: keeps the most likely tokens until their probability reaches p.

    Definition (what the numpy reference in the tests computes by sorting): in descending order a
    token is kept when the probability mass *before* it is < p, so the most likely token is always
    kept and the kept set is the smallest one whose mass is >= p; tokens tied with the last kept
    one are kept too. p may be traced.

    Computed without sorting: the kept set is {x : prob(x) >= t*} for the largest t* with
    mass(prob >= t*) >= p, and t* is found exactly by bisection on the int32 bit patterns of the
    float32 probabilities (monotone for non-negative floats; 31 halvings of [0, bits(1.0)]), each
    step one masked sum over the vocabulary. XLA:CPU's sort of a [16, 8192] batch costs ~30 ms,
    the 31 masked sums ~2 ms (measured, benchmarks/decode.py's machine): the sort would cost more
    than the model's step.
    """
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    bits = jax.lax.bitcast_convert_type(probs, jnp.int32)
    p = jnp.asarray(p, jnp.float32)
    shape = logits.shape[:-1] + (1,)
    low = jnp.zeros(shape, jnp.int32)  # mass(prob >= low) = 1 >= p
    high = jnp.full(shape, int(np.float32(1.0).view(np.int32)) + 1, jnp.int32)  # mass = 0 < p

    def halve(_, bounds):
        low, high = bounds
        middle = low + (high - low) // 2
        enough = jnp.sum(jnp.where(bits >= middle, probs, 0.0), axis=-1, keepdims=True) >= p
        return jnp.where(enough, middle, low), jnp.where(enough, high, middle)

    low, _ = jax.lax.fori_loop(0, 31, halve, (low, high))
    return jnp.where(bits >= low, logits, NEG_INF)


def sample_categorical(key: jax.Array, logits: jax.Array) -> jax.Array:
    """int32 [...]: one draw per row from softmax(logits) by inverting the CDF with one uniform
    per row (`-inf` logits have probability 0 and are never drawn). Gumbel-max
    (`jax.random.categorical`) needs a random number per vocabulary entry: ~3 ms per step at
    [16, 8192] on CPU for threefry alone, more than this whole function."""
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    cdf = jnp.cumsum(probs, axis=-1)
    u = jax.random.uniform(key, logits.shape[:-1] + (1,), jnp.float32) * cdf[..., -1:]
    index = jnp.sum(cdf <= u, axis=-1).astype(jnp.int32)
    # u rounds up to the total only within an ulp of 1: then take the most likely token.
    return jnp.where(index < logits.shape[-1], index,
                     jnp.argmax(probs, axis=-1).astype(jnp.int32))


def process(logits: jax.Array, sampling: SamplingConfig, temperature=None, top_p=None
            ) -> jax.Array:
    """Temperature, top-k, top-p, in that order (HF's order). `temperature` / `top_p` override
    the config's values with traced scalars (so a sweep does not recompile); whether top-p runs at
    all is decided by the static `sampling.top_p < 1`."""
    temperature = sampling.temperature if temperature is None else temperature
    top_p = sampling.top_p if top_p is None else top_p
    safe = jnp.where(jnp.asarray(temperature) > 0, temperature, 1.0)
    logits = apply_temperature(logits, safe)
    logits = top_k_filter(logits, sampling.top_k)
    if sampling.top_p < 1.0:
        logits = top_p_filter(logits, top_p)
    return logits


def choose(key: jax.Array, logits: jax.Array, sampling: SamplingConfig, temperature=None,
           top_p=None) -> jax.Array:
    """int32 token per row of `logits` [..., vocab]: argmax when temperature == 0, else a sample
    from the processed distribution."""
    temperature = sampling.temperature if temperature is None else temperature
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    if isinstance(temperature, (int, float)) and temperature == 0:
        return greedy
    sampled = sample_categorical(key, process(logits, sampling, temperature, top_p))
    return jnp.where(jnp.asarray(temperature) > 0, sampled, greedy)
