"""Our decoder against the exported transformers model: logits and greedy decoding.

Used by the parity tests and by `python -m cm3leon_jax.export ... --verify` (an export that can
be checked where it is written should be). Both sides run in float32 on CPU:

* logits: one forward pass over the same ids (ours: the KV-cache prefill call); the number
  reported is the max |difference|.
  Chameleon's HF `forward` overwrites the logits of every id `vocabulary_map` names as an image
  code with the float minimum (its generation is text-only), so the comparison there uses
  `lm_head(model.model(ids))`, the logits before that masking.
* greedy decoding: HF `generate(do_sample=False)` against our own loop over the decoder's KV
  cache (`models/kv_cache.py`: one prefill call, then one token per call). For Chameleon our loop
  bans the same image ids HF masks. HF semantics for `<eos>` are reproduced: a row that emitted
  it continues with `<pad>`, and decoding stops once every row has.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from cm3leon_jax.config import ModelConfig


@functools.lru_cache(maxsize=8)
def _forward(model: ModelConfig):
    from cm3leon_jax.models.decoder import Decoder  # noqa: PLC0415

    return jax.jit(lambda params, tokens: Decoder(model).apply({"params": params}, tokens))


def our_logits(params, model: ModelConfig, ids: np.ndarray) -> np.ndarray:
    """Our decoder's logits [batch, length, vocab] (one jitted forward per model config)."""
    return np.asarray(_forward(model)(params, jnp.asarray(ids, jnp.int32)), np.float32)


def our_greedy(params, model: ModelConfig, prompt: np.ndarray, steps: int,
               banned_ids: Optional[np.ndarray] = None, eos_id: Optional[int] = None,
               pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Greedy continuation of `prompt` [batch, length] with the KV cache: (tokens
    [batch, <= steps], the prompt's logits [batch, length, vocab] from the prefill call)."""
    from cm3leon_jax.models import Decoder, init_cache  # noqa: PLC0415

    batch, length = prompt.shape
    decoder = Decoder(model)
    penalty = np.zeros((model.vocab_size,), np.float32)
    if banned_ids is not None and len(banned_ids):
        penalty[np.asarray(banned_ids)] = -np.inf

    @jax.jit
    def prefill(p, tokens, cache):
        logits, cache = decoder.apply({"params": p}, tokens, cache=cache)
        return jnp.argmax(logits[:, -1] + penalty, axis=-1).astype(jnp.int32), logits, cache

    @jax.jit
    def step(p, token, cache):
        logits, cache = decoder.apply({"params": p}, token[:, None], cache=cache)
        return jnp.argmax(logits[:, -1] + penalty, axis=-1).astype(jnp.int32), cache

    cache = init_cache(model, batch, length + steps)
    token, prompt_logits, cache = prefill(params, jnp.asarray(prompt, jnp.int32), cache)
    finished = np.zeros((batch,), bool)
    generated = []
    for index in range(steps):
        chosen = np.where(finished, pad_id, np.asarray(token))
        generated.append(chosen)
        if eos_id is not None:
            finished |= chosen == eos_id
            if finished.all():
                break
        if index + 1 < steps:
            token, cache = step(params, jnp.asarray(chosen, jnp.int32), cache)
    return np.stack(generated, axis=1), np.asarray(prompt_logits, np.float32)


def load_hf(out_dir: str):
    """The exported model in transformers (torch, float32, eval mode)."""
    import torch  # noqa: PLC0415
    import transformers  # noqa: PLC0415

    with open(os.path.join(out_dir, "config.json")) as handle:
        model_type = json.load(handle)["model_type"]
    cls = (transformers.OPTForCausalLM if model_type == "opt"
           else transformers.ChameleonForConditionalGeneration)
    model = cls.from_pretrained(out_dir, dtype=torch.float32)
    return model.eval()


def hf_logits(hf_model, ids: np.ndarray) -> np.ndarray:
    """All logits (Chameleon: before HF's image-logit masking)."""
    import torch  # noqa: PLC0415

    tokens = torch.tensor(np.asarray(ids), dtype=torch.long)
    with torch.no_grad():
        if hf_model.config.model_type == "chameleon":
            hidden = hf_model.model(input_ids=tokens).last_hidden_state
            return hf_model.lm_head(hidden).float().numpy()
        return hf_model(input_ids=tokens).logits.float().numpy()


def hf_banned_ids(hf_model) -> np.ndarray:
    """The ids whose logits HF's forward masks (Chameleon image codes; none for OPT)."""
    if hf_model.config.model_type != "chameleon":
        return np.zeros((0,), np.int64)
    return np.asarray(hf_model.model.vocabulary_mapping.image_tokens, np.int64)


def hf_greedy(hf_model, prompt: np.ndarray, steps: int) -> np.ndarray:
    import torch  # noqa: PLC0415

    tokens = torch.tensor(np.asarray(prompt), dtype=torch.long)
    with torch.no_grad():
        out = hf_model.generate(tokens, attention_mask=torch.ones_like(tokens),
                                max_new_tokens=steps, do_sample=False)
    return out[:, prompt.shape[1]:].numpy()


def compare(params, model: ModelConfig, out_dir: str, ids: np.ndarray, steps: int = 32,
            stop_at_eos: bool = True) -> dict:
    """Logits and greedy decoding of ours against the export, for ids [batch, length]:
    {'max_abs_logit_diff', 'greedy_identical', 'ours', 'theirs' (generated ids), 'hf_model'}.

    Our logits are those of the cached prefill call, so the KV-cache path is what is compared.
    stop_at_eos=False decodes exactly `steps` tokens on both sides (HF's generation config gets
    no eos id), so a comparison always covers the full length."""
    hf_model = load_hf(out_dir)
    generation = hf_model.generation_config
    eos_id = generation.eos_token_id if stop_at_eos else None
    if not stop_at_eos:
        generation.eos_token_id = None
    theirs = hf_greedy(hf_model, ids, steps)
    ours, logits = our_greedy(params, model, ids, steps, banned_ids=hf_banned_ids(hf_model),
                              eos_id=eos_id, pad_id=generation.pad_token_id or 0)
    difference = float(np.max(np.abs(logits - hf_logits(hf_model, ids))))
    return {"max_abs_logit_diff": difference,
            "greedy_identical": bool(ours.shape == theirs.shape and np.array_equal(ours, theirs)),
            "ours": ours, "theirs": theirs, "hf_model": hf_model}


def mixed_prompt(model: ModelConfig, vocab, length: int, rng: np.random.Generator) -> np.ndarray:
    """One row of `length` ids mixing text and an image (random ids when no vocabulary)."""
    if vocab is None:
        return rng.integers(0, model.vocab_size, (1, length), dtype=np.int64)
    text = rng.integers(vocab.text_offset, vocab.image_offset, (length,))
    codes = rng.integers(vocab.image_offset, vocab.used_size, (length,))
    ids = text.copy()
    start = length // 4
    ids[start] = vocab.boi_id
    ids[start + 1:start + 1 + length // 2] = codes[:length // 2]
    ids[start + 1 + length // 2] = vocab.eoi_id
    return ids[None, :length].astype(np.int64)
