"""Instruction-tuning (SFT) examples: tasks written as prompts, loss on the answer only.

CM3leon's second stage trains the same model with the same next-token loss on tasks written as

    prompt segment <break> prompt segment ... <break> output <eos>

with the loss on the output (and its `<eos>`, so the model learns where the answer ends) and none
on the prompt: the model is taught to *answer*, not to reproduce instructions. The tasks, all built
from the fields of one prepared record (`data/offline/shards.py`):

| task | prompt segments | output |
|---|---|---|
| text_to_image | "Generate an image: {caption}" | the image |
| captioning | "Describe the given picture.", the image | the caption |
| vqa | the image, "Question: {question} Answer:" | "{answer}." |
| editing | "Edit the image following the instruction: {instruction}", the image | edited image |
| grounded_generation | "Generate an image with each object at ...: {caption}" | the image |

VQA puts the image first so that the prompt ends in "Answer:", directly before the answer (the
paper's "Question: {q} Answer: {a}." template); the other tasks follow the paper's `instruction
<break> input <break> output`. Spatially grounded generation uses captions that name positions
(`config.sft.grounding_pattern`; every `shapes` caption names grid cells such as "at the top
left"), with an instruction saying that the positions matter.

Templates are text (`config.sft`, validated there). Their literal parts are encoded once with the
vocabulary's text tokenizer and the record's already tokenized fields (caption, question, answer,
instruction) are spliced between them as ids, so tf.data never tokenizes text. Inference must build
prompts the same way (`Templates.prompt`), since BPE pieces of "image: a red" tokenized as one
string may differ from the spliced pieces the model was trained on.

One example per record: the record's task is drawn by the mixture weights among the tasks the
record supports (`Templates.applicable`), from a per-example seeded Generator, so the stream is
deterministic. With data that supports every task the weights are the exact expected shares of
examples; a record lacking question/answer pairs or an edit pair is shared among the other tasks.
"""

from __future__ import annotations

import dataclasses
import re
import string
from typing import Callable, Optional, Sequence

import numpy as np

from cm3leon_jax.config import SFT_TASKS, SFTConfig
from cm3leon_jax.data.input import layout
from cm3leon_jax.data.input.cm3 import SpecialIds

TASKS = SFT_TASKS
TASK_IDS = {task: index for index, task in enumerate(TASKS)}


def strip_image_markers(ids: np.ndarray, special: SpecialIds) -> np.ndarray:
    """An image's codes without a leading `<boi>` / trailing `<eoi>`.

    `prepare` stores images as `vocab.image_ids(codes)` (wrapped), the layout code wants the bare
    codes and wraps them itself; accepting both keeps the pipeline independent of that detail.
    """
    ids = np.asarray(ids, np.int32)
    start = 1 if ids.size and ids[0] == special.boi else 0
    end = len(ids) - 1 if len(ids) > start and ids[-1] == special.eoi else len(ids)
    return ids[start:end]


@dataclasses.dataclass
class Record:
    """The fields of one prepared record an SFT task can use (unified ids; images bare codes)."""

    text: np.ndarray
    image: np.ndarray
    questions: Sequence[np.ndarray] = ()
    answers: Sequence[np.ndarray] = ()
    edit_instruction: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int32))
    edit_image: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int32))


def render_example(prompt: Sequence[tuple[str, np.ndarray]], output: tuple[str, np.ndarray],
                   special: SpecialIds) -> tuple[np.ndarray, np.ndarray]:
    """`prompt <break> output <eos>` as (int32 ids, float32 weights): 0 on the prompt and its
    closing `<break>`, 1 on the output and `<eos>`.

    `prompt` and `output` are `(modality, ids)` segments as `layout.render_segments` takes them
    (images as bare codes, wrapped here in `<boi> ... <eoi>`).
    """
    prompt_ids = layout.render_segments(prompt, special)
    output_ids = layout.render_segments([output], special)
    if not prompt_ids.size or not output_ids.size:
        raise ValueError("an SFT example needs a non-empty prompt and output")
    ids = np.concatenate([prompt_ids, [special.break_], output_ids, [special.eos]]).astype(np.int32)
    weights = np.zeros(len(ids), np.float32)
    weights[len(prompt_ids) + 1:] = 1.0
    return ids, weights


class Templates:
    """The config's templates with their literal parts pre-encoded; builds prompts and examples.

    encode_text: str -> unified text ids (`Vocabulary.encode_text`); called once per literal part.
    decode_text: unified text ids -> str (`Vocabulary.decode_text`); needed only to test captions
      for grounded generation (regular expression `sft.grounding_pattern`).
    """

    def __init__(self, sft: SFTConfig, special: SpecialIds, encode_text: Callable[[str], list[int]],
                 decode_text: Optional[Callable[[np.ndarray], str]] = None):
        self.sft, self.special = sft, special
        self.decode_text = decode_text
        self.grounding = re.compile(sft.grounding_pattern, re.IGNORECASE)
        if sft.grounded_generation > 0 and decode_text is None:
            raise ValueError("grounded_generation has weight > 0 but no decode_text was given to "
                             "test captions against config.sft.grounding_pattern")
        self._parts: dict[str, list[tuple[np.ndarray, Optional[str]]]] = {}
        for name in ("text_to_image_template", "captioning_template", "vqa_template",
                     "vqa_answer_template", "editing_template", "grounded_generation_template"):
            parts = []
            for literal, field, _, _ in string.Formatter().parse(getattr(sft, name)):
                parts.append((np.asarray(encode_text(literal) if literal else [], np.int32),
                              field))
            self._parts[name] = parts

    @classmethod
    def from_vocab(cls, sft: SFTConfig, vocab, special: Optional[SpecialIds] = None
                   ) -> "Templates":
        """Templates encoded with a `cm3leon_jax.vocab.Vocabulary`'s text tokenizer."""
        if special is None:
            special = SpecialIds(pad=vocab.pad_id, eos=vocab.eos_id, break_=vocab.break_id,
                                 boi=vocab.boi_id, eoi=vocab.eoi_id,
                                 sentinels=tuple(int(s) for s in vocab.sentinel_ids),
                                 mask=vocab.mask_id)
        return cls(sft, special, vocab.encode_text, vocab.decode_text)

    def fill(self, template: str, **fields: np.ndarray) -> np.ndarray:
        """Template `template` (a field name of SFTConfig) with `{field}`s replaced by id arrays."""
        pieces = []
        for literal, field in self._parts[template]:
            pieces.append(literal)
            if field is not None:
                pieces.append(np.asarray(fields[field], np.int32))
        return np.concatenate(pieces).astype(np.int32) if pieces else np.zeros(0, np.int32)

    # ---------------------------------------------------------------------------------------
    def applicable(self, record: Record) -> np.ndarray:
        """bool [len(TASKS)]: which tasks this record can be an example of."""
        has_text, has_image = record.text.size > 0, record.image.size > 0
        grounded = False
        if has_text and has_image and self.sft.grounded_generation > 0:
            grounded = bool(self.grounding.search(self.decode_text(record.text)))
        has_qa = any(q.size and a.size for q, a in zip(record.questions, record.answers))
        return np.array([
            has_text and has_image,                                               # text_to_image
            has_text and has_image,                                               # captioning
            has_image and has_qa,                                                 # vqa
            has_image and record.edit_instruction.size > 0 and record.edit_image.size > 0,
            grounded,                                                             # grounded
        ])

    def prompt_segments(self, task: str, record: Record,
                        qa_index: int = 0) -> list[tuple[str, np.ndarray]]:
        """The prompt of `task` for `record` as `(modality, ids)` segments."""
        if task == "text_to_image":
            return [(layout.TEXT, self.fill("text_to_image_template", caption=record.text))]
        if task == "grounded_generation":
            return [(layout.TEXT, self.fill("grounded_generation_template", caption=record.text))]
        if task == "captioning":
            return [(layout.TEXT, self.fill("captioning_template")), (layout.IMAGE, record.image)]
        if task == "vqa":
            return [(layout.IMAGE, record.image),
                    (layout.TEXT, self.fill("vqa_template", question=record.questions[qa_index]))]
        if task == "editing":
            return [(layout.TEXT, self.fill("editing_template",
                                            instruction=record.edit_instruction)),
                    (layout.IMAGE, record.image)]
        raise ValueError(f"unknown SFT task {task!r}; tasks: {', '.join(TASKS)}")

    def output_segment(self, task: str, record: Record,
                       qa_index: int = 0) -> tuple[str, np.ndarray]:
        if task in ("text_to_image", "grounded_generation"):
            return layout.IMAGE, record.image
        if task == "captioning":
            return layout.TEXT, record.text
        if task == "vqa":
            return layout.TEXT, self.fill("vqa_answer_template", answer=record.answers[qa_index])
        if task == "editing":
            return layout.IMAGE, record.edit_image
        raise ValueError(f"unknown SFT task {task!r}; tasks: {', '.join(TASKS)}")

    def prompt(self, task: str, record: Record, qa_index: int = 0) -> np.ndarray:
        """The ids a model is given at inference: the prompt and the `<break>` before the output
        (the model continues with the output, e.g. `<boi>` and codes for text-to-image)."""
        ids = layout.render_segments(self.prompt_segments(task, record, qa_index), self.special)
        return np.concatenate([ids, [self.special.break_]]).astype(np.int32)

    def example(self, task: str, record: Record, qa_index: int = 0
                ) -> tuple[np.ndarray, np.ndarray]:
        """(ids, weights) of one training example of `task` (see `render_example`)."""
        return render_example(self.prompt_segments(task, record, qa_index),
                              self.output_segment(task, record, qa_index), self.special)

    def draw(self, record: Record, rng: np.random.Generator, weights: np.ndarray
             ) -> Optional[tuple[int, np.ndarray, np.ndarray]]:
        """(task id, ids, weights) of the example drawn for `record`, or None if no task with
        weight > 0 applies. `weights` [len(TASKS)] are the mixture weights."""
        usable = np.where(self.applicable(record), np.asarray(weights, np.float64), 0.0)
        total = usable.sum()
        if total <= 0:
            return None
        task = int(np.searchsorted(np.cumsum(usable / total), rng.random(), side="right"))
        task = min(task, len(TASKS) - 1)
        while usable[task] == 0:  # Guards the float edge of searchsorted at the top end.
            task -= 1
        qa_index = 0
        if TASKS[task] == "vqa":
            pairs = [i for i, (q, a) in enumerate(zip(record.questions, record.answers))
                     if q.size and a.size]
            qa_index = pairs[int(rng.integers(len(pairs)))]
        ids, loss_weights = self.example(TASKS[task], record, qa_index)
        return task, ids, loss_weights


def mixture_weights(sft: SFTConfig, tasks: Optional[Sequence[str]] = None) -> np.ndarray:
    """float64 [len(TASKS)]: the config's weights, zero outside `tasks` when given (per-task eval:
    `tasks=("vqa",)` gives a stream of VQA examples only)."""
    weights = np.array([sft.weights()[task] for task in TASKS], np.float64)
    if tasks is not None:
        unknown = sorted(set(tasks) - set(TASKS))
        if unknown:
            raise ValueError(f"unknown SFT task(s) {unknown}; tasks: {', '.join(TASKS)}")
        keep = np.array([task in tasks for task in TASKS])
        if not (weights[keep] > 0).any():
            weights = keep.astype(np.float64)  # An explicit eval request overrides a 0 weight.
        weights = np.where(keep, weights, 0.0)
    if not (weights > 0).any():
        raise ValueError("every SFT task weight is 0: nothing to build")
    return weights
