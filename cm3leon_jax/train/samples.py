"""Text-to-image samples at every eval of pretraining / instruction tuning, as TensorBoard images.

`config.samples.num_captions` > 0 turns it on (off by default and in the tests that do not test it):
the first `num_captions` documents of the prepared validation split (shard order, so the same
captions for the whole run and across resumes) give the captions; at each eval the model being
trained generates `num_samples` images for each through the library API
(`generation.Generator.text_to_image`, built from the in-memory params, vocabulary and VQ-GAN: no
checkpoint is read), and one grid goes to TensorBoard under `samples/text_to_image`: one row per
caption, the real validation image (its VQ-GAN reconstruction) first, then the samples best
first. The captions go to `samples/captions` as text.

Retrieval is not used for these samples (`retrieval=False`): the figure tracks the decoder alone.
When every caption is a `shapes` caption (`scenes.parse_caption` reads its objects), the verifier
also judges the best sample of each (`evaluation.attributes.judge_images`), and the eval figures
gain "samples": {exact_match, attribute_accuracy, ...}: the verifier's learning curve, logged with
the eval losses (TensorBoard and the run's eval_log.jsonl).
"""

from __future__ import annotations

from typing import Callable, Optional

from absl import logging
import flax.linen as nn
import jax
import ml_collections
import numpy as np

from cm3leon_jax import console
from cm3leon_jax import config as config_lib
from cm3leon_jax.data.offline import shards
from cm3leon_jax.data.sources.shapes import scenes
from cm3leon_jax.evaluation import attributes

TEXT_TO_IMAGE_TAG = "samples/text_to_image"  # the TensorBoard image of each eval's sample grid


def validation_examples(prepared, vocab, count: int) -> list[tuple[str, np.ndarray]]:
    """(caption, int32 codes [h, w]) of the first `count` validation documents with an image."""
    found = []
    for record in shards.read_records(prepared, "validation"):
        image, text = record["image"], record["text"]
        if len(image) != vocab.tokens_per_image - 2 or not len(text):
            continue
        codes = (image - vocab.image_offset).reshape(vocab.code_shape).astype(np.int32)
        found.append((vocab.decode_text(text), codes))
        if len(found) == count:
            return found
    return found


def sample_grid(real: np.ndarray, generated: np.ndarray, scale: int = 1,
                gap: int = 2) -> np.ndarray:
    """uint8 [H', W', 3]: row i = real[i] then generated[i, 0..N-1]; `gap` white pixels apart."""
    count, samples, height, width, channels = generated.shape
    cell_h, cell_w = height * scale + gap, width * scale + gap
    grid = np.full((count * cell_h + gap, (samples + 1) * cell_w + gap, channels), 255, np.uint8)
    for row in range(count):
        for column, image in enumerate([real[row], *generated[row]]):
            top, left = row * cell_h + gap, column * cell_w + gap
            big = np.repeat(np.repeat(np.asarray(image, np.uint8), scale, 0), scale, 1)
            grid[top:top + height * scale, left:left + width * scale] = big
    return grid


def make_on_eval(cfg: ml_collections.ConfigDict, setup, stage: str
                 ) -> Optional[Callable[[object, int, object], dict]]:
    """The loop's `Task.on_eval` hook writing sample grids, or None when `samples` is off.

    setup: a `train.decoder_task.Setup` (model config, vocabulary, prepared data)."""
    from cm3leon_jax.generation.generator import Generator  # noqa: PLC0415

    samples = config_lib.samples_config(cfg)
    if not samples.num_captions:
        return None
    if "validation" not in setup.prepared_splits:
        logging.warning("samples: the prepared data has no validation split; no image samples")
        return None
    examples = validation_examples(setup.prepared, setup.vocab, samples.num_captions)
    if not examples:
        logging.warning("samples: no validation document has a caption and an image")
        return None
    captions = [caption for caption, _ in examples]
    expected = [scenes.parse_caption(caption) for caption in captions]
    judged = all(objects for objects in expected)
    sampling = samples.sampling()
    sft = config_lib.sft_config(cfg) if stage == "sft" else config_lib.SFTConfig()
    real = {}

    def on_eval(params, step: int, writer) -> dict:
        if jax.process_count() > 1:  # decoding gathers params on one host: single-process only
            logging.warning("samples: skipped in a multi-process run")
            return {}
        generator = Generator(jax.device_get(params), setup.model, setup.vocab, stage=stage,
                              sft=sft)
        # Decode on plain arrays, outside the training mesh's activation rules (the sample batch
        # need not divide the batch axes).
        with nn.logical_axis_rules(()):
            results = generator.text_to_image(captions, num_samples=samples.num_samples,
                                              sampling=sampling, seed=samples.seed,
                                              retrieval=False)
            if "images" not in real:
                real["images"] = generator.image_tokenizer.decode(
                    np.stack([codes for _, codes in examples]))
        generated = np.stack([result.images for result in results])
        grid = sample_grid(real["images"], generated, scale=samples.scale)
        writer.write_images(step, {TEXT_TO_IMAGE_TAG: grid[None]})
        writer.write_texts(step, {"samples/captions": "\n\n".join(
            f"{i}: {caption}" for i, caption in enumerate(captions))})
        note = ""
        figures = {}
        if judged:
            figures, _ = attributes.judge_images(generated[:, 0], expected)
            note = (f"; verifier exact {figures['exact_match']:.2f}, attributes "
                    f"{figures['attribute_accuracy']:.2f}")
        console.say(f"[{stage}] eval at step {step}: wrote {generated.shape[0]}x{generated.shape[1]} "
                    f"image samples to TensorBoard{note}")
        return {"samples": figures} if figures else {}

    return on_eval
