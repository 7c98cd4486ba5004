"""Prompts for each task, in the layout the model was trained on.

A prompt must look exactly like the beginning of a training example, or the model is asked
something it never saw. Two stages, two layouts:

* pretrained model (`<workdir>/pretrain`; documents as `data/input/layout.py` writes them, after CM3
  training on `ret_1 <break> ret_2 <break> query <eos>`):
    text-to-image   caption <break> <boi>            -> codes <eoi>
    captioning      <boi> codes <eoi> <break>        -> caption <eos>
    infilling       prefix <mask:0> suffix <mask:0>  -> span <eos>   (CM3: the `<eos>` stays last,
                                                        after the moved spans, `data/input/cm3.py`)
* instruction-tuned model (`<workdir>/sft`; `data/input/sft_tasks.py`'s `Templates.prompt`, which
  splices the tokenized fields between the pre-encoded literal parts of the templates, the same
  ids training used):
    text-to-image   "Generate an image: {caption}" <break> <boi>       -> codes <eoi>
    captioning      "Describe the given picture." <break> image <break> -> caption <eos>
    VQA             image <break> "Question: {question} Answer:" <break> -> "{answer}." <eos>
    editing         "Edit the image ...: {instruction}" <break> image <break> <boi> -> codes <eoi>

VQA and editing exist only after SFT; asking the pretrained model for them is an error that says
so. The templates come from the checkpoint's saved config (`sft` section) or `config.SFTConfig`'s
defaults.

Image prompts end with `<boi>`, so the first generated token is already an image code (the
decoder starts in the "inside an image" state, `constraints.initial_state`).

Unconditional prompts (classifier-free guidance, CD-K's amateur): the *text condition* becomes one
`<mask>` and nothing else changes: the caption for text-to-image (the SFT instruction's literal
words stay, they say which task this is, not what to draw), the edit instruction for editing
(the source image stays: guidance then pushes toward following the instruction, as in
InstructPix2Pix's text guidance). Retrieved documents are left out of the unconditional prompt:
they were retrieved *by* the condition, so they are part of it.

Retrieved documents (`retrieved_context.py`) are prepended as `ret_1 <break> ret_2 <break>`,
rendered in the same modality order as the query (caption first for text-to-image, image first for
captioning), as pretraining laid them out.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from cm3leon_jax.config import SFTConfig
from cm3leon_jax.data.input import layout, sft_tasks
from cm3leon_jax.data.input.cm3 import SpecialIds

STAGES = ("pretrain", "sft")
TASKS = ("text2image", "caption", "vqa", "edit", "infill")
MASK_MARKER = "<mask>"


@dataclasses.dataclass
class Prompt:
    """Everything the decoder needs for one request.

    ids: the conditional prompt; uncond_ids: the unconditional one (CFG / CD-K).
    output: "image" or "text" (`constraints.OUTPUTS`); start_in_image: ids end with `<boi>`.
    stop_ids: ids that end a text output besides `<eos>`. allow_sentinels: text may contain CM3
    sentinels (infilling several spans). num_spans: infilling only, how many `<mask>` the text had;
    pieces: infilling only, the encoded text pieces around the masks.
    """

    ids: np.ndarray
    uncond_ids: np.ndarray
    output: str
    start_in_image: bool = False
    stop_ids: tuple[int, ...] = ()
    allow_sentinels: bool = False
    num_spans: int = 0
    pieces: tuple[np.ndarray, ...] = ()


def special_ids(vocab) -> SpecialIds:
    return SpecialIds(pad=vocab.pad_id, eos=vocab.eos_id, break_=vocab.break_id,
                      boi=vocab.boi_id, eoi=vocab.eoi_id,
                      sentinels=tuple(int(s) for s in vocab.sentinel_ids), mask=vocab.mask_id)


def image_ids(vocab, codes: np.ndarray) -> np.ndarray:
    """Bare code ids (offset into the vocabulary, row-major) of a [h, w] code grid."""
    codes = np.asarray(codes)
    if codes.shape != vocab.code_shape:
        raise ValueError(f"image codes must have shape {vocab.code_shape}, got {codes.shape}")
    return (codes.reshape(-1).astype(np.int64) + vocab.image_offset).astype(np.int32)


def _ids(*parts: Sequence[int]) -> np.ndarray:
    pieces = [np.asarray(p, np.int32).reshape(-1) for p in parts]
    return np.concatenate(pieces).astype(np.int32) if pieces else np.zeros(0, np.int32)


class PromptBuilder:
    """Builds `Prompt`s for one vocabulary and stage (see the module docstring)."""

    def __init__(self, vocab, stage: str, sft: SFTConfig = SFTConfig()):
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        self.vocab, self.stage, self.sft = vocab, stage, sft
        self.special = special_ids(vocab)
        self.templates = sft_tasks.Templates.from_vocab(sft, vocab, self.special)

    # ----------------------------------------------------------------------------- helpers
    def _text(self, text: str, what: str) -> np.ndarray:
        ids = np.asarray(self.vocab.encode_text(text), np.int32)
        if not ids.size:
            raise ValueError(f"the {what} is empty")
        return ids

    def _with_retrieved(self, ids: np.ndarray, retrieved: Optional[np.ndarray]) -> np.ndarray:
        if retrieved is None or not len(retrieved):
            return ids
        return _ids(retrieved, ids)

    def _require_sft(self, task: str) -> None:
        if self.stage != "sft":
            raise ValueError(f"the {task} task needs the instruction-tuned model (<workdir>/sft),"
                             " not the pretrained one: pretraining never shows this task. Run "
                             "`python -m cm3leon_jax.sft --config experiments/sft_tiny.py "
                             "--workdir <workdir>` first")

    def retrieved_prefix(self, documents: Sequence[layout.Document], image_first: bool
                         ) -> np.ndarray:
        """`ret_1 <break> ret_2 <break>` (empty when there are no documents)."""
        rendered = [layout.render_document(d, self.special, image_first) for d in documents]
        rendered = [r for r in rendered if r.size]
        if not rendered:
            return np.zeros(0, np.int32)
        joined = layout.join_documents(rendered, self.special)  # ends with <eos>
        return _ids(joined[:-1], [self.special.break_])

    # ------------------------------------------------------------------------------- tasks
    def text_to_image(self, caption: str, retrieved: Optional[np.ndarray] = None) -> Prompt:
        caption_ids = self._text(caption, "text-to-image prompt")
        mask = [self.special.mask]
        if self.stage == "sft":
            record = sft_tasks.Record(text=caption_ids, image=np.zeros(0, np.int32))
            cond = _ids(self.templates.prompt("text_to_image", record), [self.special.boi])
            uncond = _ids(self.templates.fill("text_to_image_template", caption=mask),
                          [self.special.break_, self.special.boi])
        else:
            cond = _ids(caption_ids, [self.special.break_, self.special.boi])
            uncond = _ids(mask, [self.special.break_, self.special.boi])
        return Prompt(ids=self._with_retrieved(cond, retrieved), uncond_ids=uncond,
                      output="image", start_in_image=True)

    def caption(self, codes: np.ndarray, retrieved: Optional[np.ndarray] = None) -> Prompt:
        image = image_ids(self.vocab, codes)
        if self.stage == "sft":
            record = sft_tasks.Record(text=np.zeros(0, np.int32), image=image)
            cond = self.templates.prompt("captioning", record)
        else:
            cond = _ids([self.special.boi], image, [self.special.eoi, self.special.break_])
        return self._text_prompt(self._with_retrieved(cond, retrieved))

    def vqa(self, codes: np.ndarray, question: str) -> Prompt:
        self._require_sft("vqa")
        record = sft_tasks.Record(text=np.zeros(0, np.int32), image=image_ids(self.vocab, codes),
                                  questions=[self._text(question, "question")],
                                  answers=[np.zeros(0, np.int32)])
        return self._text_prompt(self.templates.prompt("vqa", record))

    def edit(self, codes: np.ndarray, instruction: str) -> Prompt:
        self._require_sft("edit")
        image = image_ids(self.vocab, codes)
        record = sft_tasks.Record(text=np.zeros(0, np.int32), image=image,
                                  edit_instruction=self._text(instruction, "edit instruction"))
        cond = _ids(self.templates.prompt("editing", record), [self.special.boi])
        s = self.special
        uncond = _ids(self.templates.fill("editing_template", instruction=[s.mask]), [s.break_],
                      [s.boi], image, [s.eoi, s.break_, s.boi])
        return Prompt(ids=cond, uncond_ids=uncond, output="image", start_in_image=True)

    def infill(self, text: str) -> Prompt:
        """CM3 infilling of text: each `<mask>` in `text` becomes `<mask:i>`; the prompt ends
        with `<mask:0>`, after which the model writes span 0 (then `<mask:1>` span 1, ...)."""
        pieces = text.split(MASK_MARKER)
        spans = len(pieces) - 1
        if spans < 1:
            raise ValueError(f"an infilling prompt needs at least one {MASK_MARKER}, got {text!r}")
        if spans > self.vocab.config.num_mask_sentinels:
            raise ValueError(f"{spans} masks but the vocabulary has only "
                             f"{self.vocab.config.num_mask_sentinels} sentinels")
        # Pieces are encoded as written, spaces included: the text tokenizer keeps whitespace
        # as pieces (no dummy prefix), so "a <mask> circle" is "a " + span + " circle".
        encoded = tuple(np.asarray(self.vocab.encode_text(p), np.int32) if p
                        else np.zeros(0, np.int32) for p in pieces)
        body: list[Sequence[int]] = []
        for index, piece in enumerate(encoded):
            body.append(piece)
            if index < spans:
                body.append([self.vocab.sentinel_id(index)])
        cond = _ids(*body, [self.vocab.sentinel_id(0)])
        # A sentinel past the last requested span, or <break>, ends the answer like <eos>.
        extra = [self.vocab.sentinel_id(i)
                 for i in range(spans, self.vocab.config.num_mask_sentinels)]
        return Prompt(ids=cond, uncond_ids=cond, output="text",
                      stop_ids=(self.special.break_, *extra), allow_sentinels=spans > 1,
                      num_spans=spans, pieces=encoded)

    def _text_prompt(self, ids: np.ndarray) -> Prompt:
        return Prompt(ids=ids, uncond_ids=ids, output="text", stop_ids=(self.special.break_,))

    # ----------------------------------------------------------------------------- outputs
    def infilled_text(self, prompt: Prompt, generated: np.ndarray) -> tuple[str, list[str]]:
        """(the text with every mask filled, the spans) from the ids generated after an
        `infill` prompt (`<mask:i>` separate spans; a missing span is empty)."""
        sentinel_of = {int(self.vocab.sentinel_id(i)): i for i in range(prompt.num_spans)}
        spans: list[list[int]] = [[] for _ in range(prompt.num_spans)]
        current = 0
        for token in np.asarray(generated).tolist():
            if token in sentinel_of:
                current = sentinel_of[token]
            elif self.vocab.is_text(np.asarray([token]))[0]:
                spans[current].append(token)
        filled: list[int] = []
        for index, piece in enumerate(prompt.pieces):
            filled.extend(piece.tolist())
            if index < prompt.num_spans:
                filled.extend(spans[index])
        return (self.vocab.decode_text(filled),
                [self.vocab.decode_text(span) for span in spans])

    def text_of(self, generated: np.ndarray) -> str:
        """The text pieces of a generated text output (stop tokens and specials dropped)."""
        ids = np.asarray(generated)
        return self.vocab.decode_text(ids[self.vocab.is_text(ids)])
