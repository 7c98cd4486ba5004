"""Batched incremental decoding with the KV cache, one `jit`, no Python loop per token.

    out = decode(params, model_cfg, prompts, max_new_tokens=258, constraints=c,
                 sampling=SamplingConfig(temperature=1.0, top_p=0.9, cfg_scale=3.0),
                 uncond_prompts=uncond, seed=0)
    out.tokens    # int32 [n, max_new_tokens], <pad> after each row's end
    out.lengths   # int32 [n]: tokens generated, the stop token included
    out.log_probs # float32 [n]: sum of the conditional model's log p of the generated tokens

How one batch runs (`_decode_batch`, compiled once per shape and static setting):

1. Prompts are *left*-padded to a common length P (rounded up to `PROMPT_BUCKET` so nearby
   lengths share a compilation). Padding gets segment id 0 and real tokens segment 1, so no real
   token attends to padding, and the decoder's positions restart at 0 where the segment starts:
   every row sees positions 0.. exactly as in training, whatever its padding.
2. Prefill: one `Decoder` call writes the whole [rows, P] prompt into a fixed-size KV cache
   (`models/kv_cache.py`) of P + max_new_tokens slots and gives the logits of the next token.
   Scanned layers are unstacked once before (`kv_cache.unstack_layers`), so each step reads plain
   per-layer weights and updates per-layer cache arrays in place.
3. `lax.while_loop`, one token per iteration, until every row has stopped or max_new_tokens:
   mask the logits (`constraints.py`), guide them at image-code positions (`guidance.py`: CFG
   with the unconditional rows, CD-K), sample (`sampling.py`), write the token into the fixed
   [rows, max_new_tokens] buffer, advance the modality state, and run the decoder on the one new
   token per row (the cache index advances by 1; segment ids and positions continue per row).
   A stopped row keeps running (fixed shapes) on `<pad>` inputs whose outputs are discarded.

With CFG or CD-K the unconditional prompts form rows [B, 2B) of the same batch and are fed the
conditional rows' tokens, so both streams share every decoder call.

Randomness: one key per batch (`fold_in(seed key, batch index)`), folded with the step number each
step, so a seed reproduces the same tokens for the same prompts, batch size and settings.

Temperature, top-p, the CFG scale and the CD alpha are traced values (a sweep over them does not
recompile); top-k, whether top-p / CFG / CD-K run at all, the model config, the lengths and the
constraint geometry are static.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cm3leon_jax.config import ModelConfig
from cm3leon_jax.generation import guidance
from cm3leon_jax.generation import constraints as constraints_lib
from cm3leon_jax.generation import sampling as sampling_lib
from cm3leon_jax.generation.constraints import Constraints
from cm3leon_jax.generation.sampling import NEG_INF, SamplingConfig
from cm3leon_jax.models.decoder import Decoder
from cm3leon_jax.models import kv_cache

PROMPT_BUCKET = 16  # prompt lengths are padded up to a multiple of this (fewer compilations)


@dataclasses.dataclass
class DecodeOutput:
    tokens: np.ndarray  # int32 [n, max_new_tokens]
    lengths: np.ndarray  # int32 [n]
    log_probs: np.ndarray  # float32 [n]

    def sequences(self) -> list[np.ndarray]:
        """Each row's generated ids, its stop token included."""
        return [row[:length] for row, length in zip(self.tokens, self.lengths)]


@dataclasses.dataclass(frozen=True)
class _Static:
    """What shapes the compiled loop (changing it recompiles)."""

    greedy: bool
    top_k: int
    use_top_p: bool
    two_streams: bool
    cd_k: int
    start_in_image: bool
    max_new_tokens: int
    pad_id: int


def _step_logits(logits, image_left, constraints: Constraints, static: _Static, knobs, batch):
    """The logits to sample from for the conditional rows, and their log-softmax (the model's
    own conditional distribution, for `log_probs`)."""
    cond = logits[:batch]
    allowed = constraints_lib.allowed(constraints, image_left)
    guided_rows = constraints_lib.in_image_codes(constraints, image_left)[:, None]
    expert = cond
    if static.two_streams:
        uncond = logits[batch:]
        expert = jnp.where(guided_rows, guidance.classifier_free_guidance(
            cond, uncond, knobs["cfg_scale"]), cond)
    expert = jnp.where(allowed, expert, NEG_INF)
    if static.cd_k:
        amateur = jnp.where(allowed, uncond, NEG_INF)
        contrast = guidance.contrastive_logits(expert, amateur, static.cd_k, knobs["cd_alpha"])
        expert = jnp.where(guided_rows, contrast, expert)
    return expert, jax.nn.log_softmax(jnp.where(allowed, cond, NEG_INF), axis=-1)


def _choose(key, logits, static: _Static, knobs):
    if static.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    # A config carrying only the static choices (top-k's k, whether top-p runs); temperature
    # and the top-p mass come from the traced knobs.
    config = SamplingConfig(temperature=1.0, top_k=static.top_k,
                            top_p=0.5 if static.use_top_p else 1.0)
    processed = sampling_lib.process(logits, config, knobs["temperature"], knobs["top_p"])
    return sampling_lib.sample_categorical(key, processed)


@functools.partial(jax.jit, static_argnames=("model_cfg", "static"))
def _decode_batch(params, prompt_tokens: jax.Array, prompt_lengths: jax.Array, key: jax.Array,
                  knobs: dict, constraints: Constraints, *, model_cfg: ModelConfig,
                  static: _Static):
    """prompt_tokens int32 [rows, P] left-padded, rows = B (or 2B with the unconditional
    stream); returns (tokens [B, N], lengths [B], log_probs [B])."""
    rows, prompt_len = prompt_tokens.shape
    batch = rows // 2 if static.two_streams else rows
    steps = static.max_new_tokens
    segments = (jnp.arange(prompt_len)[None, :] >= (prompt_len - prompt_lengths)[:, None]
                ).astype(jnp.int32)
    model = Decoder(model_cfg)
    cache = kv_cache.init_cache(model_cfg, rows, prompt_len + steps)

    def run(tokens, cache, segment_ids=None):
        return model.apply({"params": params}, tokens, segment_ids, None, cache=cache,
                           last_only=True)

    logits, cache = run(prompt_tokens, cache, segments)
    state = dict(
        step=jnp.zeros((), jnp.int32), cache=cache, logits=logits[:, -1],
        tokens=jnp.full((batch, steps), static.pad_id, jnp.int32),
        image_left=constraints_lib.initial_state(constraints, batch, static.start_in_image),
        done=jnp.zeros((batch,), bool), lengths=jnp.zeros((batch,), jnp.int32),
        log_probs=jnp.zeros((batch,), jnp.float32))

    def keep_going(state):
        return (state["step"] < steps) & ~jnp.all(state["done"])

    def one_token(state):
        step, image_left, done = state["step"], state["image_left"], state["done"]
        expert, cond_log_probs = _step_logits(state["logits"], image_left, constraints, static,
                                              knobs, batch)
        token = _choose(jax.random.fold_in(key, step), expert, static, knobs)
        token = jnp.where(done, static.pad_id, token)
        log_p = jnp.take_along_axis(cond_log_probs, token[:, None], axis=-1)[:, 0]
        ends = constraints_lib.finished(constraints, image_left, token)
        feed = jnp.concatenate([token, token]) if static.two_streams else token
        logits, cache = run(feed[:, None], state["cache"])
        return dict(
            step=step + 1, cache=cache, logits=logits[:, -1],
            tokens=jax.lax.dynamic_update_slice(state["tokens"], token[:, None], (0, step)),
            image_left=jnp.where(done, image_left,
                                 constraints_lib.advance(constraints, image_left, token)),
            done=done | ends, lengths=state["lengths"] + (~done).astype(jnp.int32),
            log_probs=state["log_probs"] + jnp.where(done, 0.0, log_p))

    state = jax.lax.while_loop(keep_going, one_token, state)
    return state["tokens"], state["lengths"], state["log_probs"]


def _static_for(sampling: SamplingConfig, two_streams: bool, start_in_image: bool,
                max_new_tokens: int, pad_id: int) -> _Static:
    return _Static(greedy=sampling.temperature == 0, top_k=sampling.top_k,
                   use_top_p=sampling.top_p < 1.0, two_streams=two_streams,
                   cd_k=sampling.cd_k if two_streams else 0, start_in_image=start_in_image,
                   max_new_tokens=max_new_tokens, pad_id=pad_id)


def _knobs(sampling: SamplingConfig) -> dict:
    return {name: jnp.asarray(getattr(sampling, name), jnp.float32)
            for name in ("temperature", "top_p", "cfg_scale", "cd_alpha")}


def pad_left(prompts: Sequence[np.ndarray], length: int, pad_id: int) -> np.ndarray:
    """int32 [n, length]: each prompt right-aligned, `pad_id` before it."""
    out = np.full((len(prompts), length), pad_id, np.int32)
    for row, prompt in enumerate(prompts):
        if len(prompt):
            out[row, length - len(prompt):] = prompt
    return out


def prompt_length(prompts: Sequence[np.ndarray], max_new_tokens: int, max_seq_len: int) -> int:
    """The padded prompt length P for these prompts (a multiple of PROMPT_BUCKET when it fits)."""
    longest = max(len(p) for p in prompts)
    if longest + max_new_tokens > max_seq_len:
        raise ValueError(f"a prompt of {longest} tokens plus {max_new_tokens} new tokens exceeds "
                         f"the model's max_seq_len={max_seq_len}; shorten the prompt (or the "
                         "retrieved documents) or generate fewer tokens")
    bucketed = -(-longest // PROMPT_BUCKET) * PROMPT_BUCKET
    return bucketed if bucketed + max_new_tokens <= max_seq_len else longest


def decode(params, model_cfg: ModelConfig, prompts: Sequence[np.ndarray], *,
           max_new_tokens: int, constraints: Constraints,
           sampling: SamplingConfig = SamplingConfig(),
           uncond_prompts: Optional[Sequence[np.ndarray]] = None, seed: int = 0,
           start_in_image: bool = False, batch_size: int = 16, pad_id: int = 0,
           force_unconditional: bool = False) -> DecodeOutput:
    """Generates up to `max_new_tokens` after each prompt (see the module docstring).

    prompts: 1-D int id arrays (any lengths, each non-empty). uncond_prompts: the same number of
      prompts for the unconditional stream; required when `sampling` uses CFG or CD-K.
    start_in_image: the prompts end with `<boi>`: the first generated token is an image code.
    batch_size: conditional rows per compiled call (the last batch is filled with copies of the
      first prompt, so every call has the same shape).
    params: scanned (`layers/...`) or unscanned; repeated callers pass
      `kv_cache.unstack_layers(params, model_cfg)` to skip a per-call copy of the weights.
    force_unconditional: run the unconditional stream (and the CFG arithmetic) even when
      `sampling` does not need it (cfg_scale 1, no CD-K): for tests that guidance at 1 is the
      conditional stream, and for timing what guidance costs.
    """
    sampling.check()
    if not len(prompts):
        raise ValueError("decode needs at least one prompt")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    two_streams = sampling.uses_unconditional or force_unconditional
    if two_streams:
        if uncond_prompts is None or len(uncond_prompts) != len(prompts):
            raise ValueError("classifier-free guidance / CD-K need one unconditional prompt per "
                             "prompt (uncond_prompts)")
        if any(len(p) == 0 for p in uncond_prompts):
            raise ValueError("every unconditional prompt needs at least one token")
    if constraints.vocab_size != model_cfg.vocab_size:
        raise ValueError(f"constraints cover {constraints.vocab_size} ids but the model has "
                         f"vocab_size={model_cfg.vocab_size}")
    everything = list(prompts) + (list(uncond_prompts) if two_streams else [])
    length = prompt_length(everything, max_new_tokens, model_cfg.max_seq_len)
    static = _static_for(sampling, two_streams, start_in_image, max_new_tokens, pad_id)
    knobs = _knobs(sampling)
    root = jax.random.key(seed)
    batch_size = max(1, min(batch_size, len(prompts)))
    # Per-layer weights for the loop (a scanned stack sliced inside it would be copied every
    # step): a copy of the weights per call when they are stacked; `Generator` does it once.
    params, model_cfg = kv_cache.unstack_layers(params, model_cfg)
    tokens, lengths, log_probs = [], [], []
    for index, start in enumerate(range(0, len(prompts), batch_size)):
        chosen = list(range(start, min(start + batch_size, len(prompts))))
        filled = chosen + [chosen[0]] * (batch_size - len(chosen))
        rows = [np.asarray(prompts[i], np.int32) for i in filled]
        if two_streams:
            rows += [np.asarray(uncond_prompts[i], np.int32) for i in filled]
        out = _decode_batch(params, jnp.asarray(pad_left(rows, length, pad_id)),
                            jnp.asarray([len(r) for r in rows], jnp.int32),
                            jax.random.fold_in(root, index), knobs, constraints,
                            model_cfg=model_cfg, static=static)
        out = jax.device_get(out)
        tokens.append(out[0][:len(chosen)])
        lengths.append(out[1][:len(chosen)])
        log_probs.append(out[2][:len(chosen)])
    return DecodeOutput(np.concatenate(tokens), np.concatenate(lengths),
                        np.concatenate(log_probs))
