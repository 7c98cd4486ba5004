"""Modality constraints: which ids each generated position may take, from the vocabulary.

One model writes both modalities into one stream, so nothing but the logits keeps it from writing
an image code into a caption, or 700 codes and then `<eoi>` into a 256-code image (which the VQ-GAN
cannot decode). The decoder therefore tracks, per row, where it is and masks the logits:

    outside an image:  `text_allowed` (depends on the task, see `OUTPUTS`)
    after `<boi>`:      image codes only, exactly h*w of them (`image_allowed`)
    after the h*w-th:   `<eoi>` only (forced)

The state is one int32 per row, `image_left`: -1 outside an image, else the number of codes still
to write (0 = `<eoi>` is next). `allowed(constraints, image_left)` gives the `[batch, vocab]`
mask, `advance` the next state; both are jit-friendly. Chameleon masks the other modality's
logits the same way (PAPER_NOTES: "image-token logits are masked when text is requested").

Never allowed anywhere: `<pad>`, the vocabulary's padding ids (>= `used_size`, they exist only to
round the embedding up to a multiple of 128), and `<mask>` (the unconditional stream's
placeholder: input only).
"""

from __future__ import annotations

from typing import Iterable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

# What a task's output may contain outside images:
#   text:  text pieces (a caption, an answer, an infilled span), then a stop token
#   image: nothing: every output position belongs to an image (`<boi>` codes `<eoi>`)
#   mixed: text, `<break>`, `<boi>` (starting an image) and stop tokens: an interleaved document
OUTPUTS = ("text", "image", "mixed")


@flax.struct.dataclass
class Constraints:
    """Masks over the model's vocabulary plus the image geometry (see the module docstring).

    enabled=False means no modality tracking at all: every id may follow every id (used to
    compare decoding with a plain forward pass); `stop` still ends a row.
    """

    text_allowed: jax.Array  # bool [vocab]
    image_allowed: jax.Array  # bool [vocab]
    stop: jax.Array  # bool [vocab]: sampling one of these ends the row
    boi: int = flax.struct.field(pytree_node=False, default=-1)
    eoi: int = flax.struct.field(pytree_node=False, default=-1)
    image_tokens: int = flax.struct.field(pytree_node=False, default=0)
    stop_after_image: bool = flax.struct.field(pytree_node=False, default=False)
    enabled: bool = flax.struct.field(pytree_node=False, default=True)

    @property
    def vocab_size(self) -> int:
        return int(self.text_allowed.shape[-1])


def _mask(ids: Iterable[int], size: int) -> np.ndarray:
    mask = np.zeros(size, bool)
    ids = np.asarray(list(ids), np.int64)
    if ids.size:
        mask[ids] = True
    return mask


def _padded(mask: np.ndarray, size: int) -> np.ndarray:
    if size < mask.shape[0]:
        raise ValueError(f"the model's vocab_size {size} is smaller than the vocabulary's "
                         f"{mask.shape[0]} ids")
    return np.concatenate([mask, np.zeros(size - mask.shape[0], bool)])


def for_vocab(vocab, vocab_size: int, output: str, *, stop_ids: Iterable[int] = (),
              allow_sentinels: bool = False) -> Constraints:
    """Constraints for a task writing `output` ("text" | "image" | "mixed", see `OUTPUTS`).

    vocab: a `cm3leon_jax.vocab.Vocabulary`; vocab_size: the model's (>= vocab.vocab_size).
    stop_ids: ids that end a row besides `<eos>` (e.g. `<break>` after a caption).
    allow_sentinels: text may contain CM3 sentinels `<mask:i>` (infilling several spans).
    An "image" output stops after its first complete image.
    """
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    stop = {vocab.eos_id, *map(int, stop_ids)}
    text = np.zeros(vocab.vocab_size, bool)
    if output in ("text", "mixed"):
        text |= vocab.text_mask()
        text[list(stop)] = True
    if output == "mixed":
        text[[vocab.break_id, vocab.boi_id]] = True
    if output == "image":
        text[vocab.boi_id] = True
    if allow_sentinels:
        text[vocab.sentinel_ids] = True
    text[[vocab.pad_id, vocab.mask_id, vocab.eoi_id]] = False
    return Constraints(
        text_allowed=jnp.asarray(_padded(text, vocab_size)),
        image_allowed=jnp.asarray(_padded(vocab.image_mask(), vocab_size)),
        stop=jnp.asarray(_padded(_mask(stop, vocab.vocab_size), vocab_size)),
        boi=vocab.boi_id, eoi=vocab.eoi_id,
        image_tokens=vocab.code_shape[0] * vocab.code_shape[1],
        stop_after_image=output == "image")


def unconstrained(vocab_size: int, stop_ids: Iterable[int] = ()) -> Constraints:
    """Every id allowed at every position; rows end at `stop_ids` (none: only at max tokens)."""
    everything = jnp.ones(vocab_size, bool)
    return Constraints(text_allowed=everything, image_allowed=everything,
                       stop=jnp.asarray(_mask(stop_ids, vocab_size)), enabled=False)


def initial_state(constraints: Constraints, batch: int, start_in_image: bool = False
                  ) -> jax.Array:
    """int32 [batch] `image_left` before the first generated token: h*w when the prompt ends
    with `<boi>` (the first generated token is a code), else -1."""
    value = constraints.image_tokens if (start_in_image and constraints.enabled) else -1
    return jnp.full((batch,), value, jnp.int32)


def allowed(constraints: Constraints, image_left: jax.Array) -> jax.Array:
    """bool [batch, vocab]: what each row may sample now."""
    if not constraints.enabled:
        return jnp.broadcast_to(constraints.text_allowed, (image_left.shape[0],
                                                           constraints.vocab_size))
    eoi_only = jnp.arange(constraints.vocab_size) == constraints.eoi
    in_codes = (image_left > 0)[:, None]
    closing = (image_left == 0)[:, None]
    return jnp.where(in_codes, constraints.image_allowed[None],
                     jnp.where(closing, eoi_only[None], constraints.text_allowed[None]))


def in_image_codes(constraints: Constraints, image_left: jax.Array) -> jax.Array:
    """bool [batch]: the next token is an image code (where CFG and CD-K apply)."""
    if not constraints.enabled:
        return jnp.zeros(image_left.shape, bool)
    return image_left > 0


def advance(constraints: Constraints, image_left: jax.Array, tokens: jax.Array) -> jax.Array:
    """The state after each row wrote `tokens` [batch]."""
    if not constraints.enabled:
        return image_left
    opened = tokens == constraints.boi
    return jnp.where(image_left > 0, image_left - 1,
                     jnp.where(image_left == 0, -1,
                               jnp.where(opened, constraints.image_tokens, -1)))


def finished(constraints: Constraints, image_left: jax.Array, tokens: jax.Array) -> jax.Array:
    """bool [batch]: writing `tokens` (in state `image_left`) ends the row: a stop token outside
    an image, or the `<eoi>` of an image-only output."""
    outside = image_left < 0 if constraints.enabled else jnp.ones(tokens.shape, bool)
    done = outside & constraints.stop[tokens]
    if constraints.enabled and constraints.stop_after_image:
        done |= (image_left == 0) & (tokens == constraints.eoi)
    return done
