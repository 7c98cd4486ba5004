"""Load the tokenizers exported next to a cm3leon_jax model (copied into every export as
`load_tokenizers.py`, so the directory explains itself).

    import load_tokenizers                                   # from inside the export directory
    tok = load_tokenizers.load()                             # text + id layout (sentencepiece)
    ids = tok.encode_text("a red circle")                    # our ids (= the model's ids)
    ids = tok.image_ids(codes)                               # <boi> + image_offset + codes + <eoi>
    config, variables = load_tokenizers.load_vqgan_weights() # the VQ-GAN as numpy arrays
    images = load_tokenizers.load_image_tokenizer().decode(codes)   # needs cm3leon_jax installed

Needs only numpy, sentencepiece and safetensors, except `load_image_tokenizer` /
`load_vocabulary`, which rebuild the project's own classes (the VQ-GAN is a Flax model; its
architecture is `cm3leon_jax/tokenizers/vqgan.py`, its config `image_tokenizer/config.json`).

Id layout (`cm3leon_vocab/vocab.json`): special tokens first (<pad> <eos> <break> <mask> <boi>
<eoi> <mask:0>..), then the sentencepiece ids shifted by `text_offset`, then the image codes
shifted by `image_offset`; ids from `used_size` to `vocab_size` are padding, never produced.
`tokenizer.json` in the export directory gives the same text ids through transformers'
`AutoTokenizer`.
"""

from __future__ import annotations

import json
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
VOCAB_DIR = "cm3leon_vocab"
IMAGE_DIR = "image_tokenizer"


class Tokenizers:
    """Text tokenizer and id layout of an export."""

    def __init__(self, layout: dict, text_processor):
        self.layout = layout
        self.text = text_processor
        self.special_ids = {name: index for index, name in enumerate(layout["special_tokens"])}
        self.text_offset = layout["text_offset"]
        self.image_offset = layout["image_offset"]
        self.codebook_size = layout["codebook_size"]
        self.code_shape = tuple(layout["image_code_shape"])

    def encode_text(self, text: str) -> list[int]:
        return [self.text_offset + i for i in self.text.encode(text)]

    def decode_text(self, ids) -> str:
        return self.text.decode([int(i) - self.text_offset for i in ids])

    def image_ids(self, codes) -> list[int]:
        """<boi>, the row-major codes [h, w] shifted by image_offset, <eoi>."""
        codes = np.asarray(codes)
        if codes.shape != self.code_shape:
            raise ValueError(f"codes must have shape {self.code_shape}, got {codes.shape}")
        return [self.special_ids["<boi>"], *(self.image_offset + codes.reshape(-1)).tolist(),
                self.special_ids["<eoi>"]]

    def is_image(self, ids) -> np.ndarray:
        ids = np.asarray(ids)
        return (ids >= self.image_offset) & (ids < self.image_offset + self.codebook_size)


def _vocab_dir(export_dir: str) -> str:
    directory = os.path.join(export_dir, VOCAB_DIR)
    if not os.path.exists(os.path.join(directory, "vocab.json")):
        raise FileNotFoundError(f"{directory}/vocab.json is missing: this export was written "
                                "without a vocabulary")
    return directory


def load(export_dir: str = HERE) -> Tokenizers:
    import sentencepiece  # noqa: PLC0415

    directory = _vocab_dir(export_dir)
    with open(os.path.join(directory, "vocab.json")) as handle:
        layout = json.load(handle)
    processor = sentencepiece.SentencePieceProcessor(
        model_file=os.path.join(directory, layout["text_model"]))
    return Tokenizers(layout, processor)


def load_vqgan_weights(export_dir: str = HERE) -> tuple[dict, dict]:
    """(the `vqgan` config dict, the Flax variables as a nested dict of numpy arrays)."""
    from safetensors.numpy import load_file  # noqa: PLC0415

    directory = os.path.join(_vocab_dir(export_dir), IMAGE_DIR)
    if not os.path.exists(os.path.join(directory, "model.safetensors")):
        raise FileNotFoundError(f"{directory} holds no VQ-GAN (model.safetensors)")
    with open(os.path.join(directory, "config.json")) as handle:
        config = json.load(handle)
    variables: dict = {}
    for name, array in load_file(os.path.join(directory, "model.safetensors")).items():
        node = variables
        *parents, leaf = name.split("/")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = array
    return config, variables


def load_image_tokenizer(export_dir: str = HERE, batch_size: int = 64):
    """The project's `ImageTokenizer` (uint8 images <-> codes); needs cm3leon_jax."""
    from cm3leon_jax import config as config_lib  # noqa: PLC0415
    from cm3leon_jax.tokenizers.image_tokenizer import ImageTokenizer  # noqa: PLC0415

    raw, variables = load_vqgan_weights(export_dir)
    config = config_lib.from_dict(raw, config_lib.VQGANConfig, prefix="vqgan")
    return ImageTokenizer(config, variables, batch_size=batch_size)


def load_vocabulary(export_dir: str = HERE):
    """The project's `Vocabulary` (text and id layout); images via `load_image_tokenizer`."""
    from cm3leon_jax.vocab import Vocabulary  # noqa: PLC0415

    return Vocabulary.load(_vocab_dir(export_dir))
