"""The unified mixed-modal vocabulary: one id space for special tokens, text pieces and image codes.

Layout (contiguous ranges, in this order):

    0 <pad>  1 <eos>  2 <break>  3 <mask>  4 <boi>  5 <eoi>  6.. <mask:0> .. <mask:K-1>
    text_offset ..  text_offset + text_size - 1      sentencepiece ids (0 <unk>, bytes, pieces)
    image_offset .. image_offset + codebook_size - 1  VQ-GAN codes
    .. vocab_size - 1                                  padding (never produced)

`vocab_size` is rounded up to a multiple of `vocab.pad_to_multiple` (128) so the decoder's
embedding and logits are tile-aligned; `text_mask()` / `image_mask()` are boolean arrays over all
`vocab_size` ids, for masking logits when one modality is requested.

A document is a list of items, `Text("a red circle")`, `Image(codes[h, w])` or `Special("<mask>")`.
`encode_document` writes each item and puts `<break>` between consecutive items (CM3leon's
modality separator: CM3 spans never cross it); an image is `<boi>`, its h*w codes row-major,
`<eoi>` (Chameleon's wrapping). `decode_document` inverts it exactly for any document, and reads
ids from elsewhere (CM3-masked or generated sequences) into the items they contain.

Saved as one directory: `vocab.json` (the layout), `text.model` (sentencepiece) and the path of
the VQ-GAN export; `Vocabulary.load(dir)` restores it and `.image_tokenizer()` loads the VQ-GAN.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Iterable, Sequence, Union

from etils import epath
import numpy as np

from cm3leon_jax.config import VocabConfig
from cm3leon_jax.tokenizers.text import TextTokenizer

PAD, EOS, BREAK, MASK, BOI, EOI = "<pad>", "<eos>", "<break>", "<mask>", "<boi>", "<eoi>"
STRUCTURAL = (PAD, EOS, BREAK, MASK, BOI, EOI)
VOCAB_FILE = "vocab.json"
TEXT_MODEL_FILE = "text.model"
FORMAT_VERSION = 1


def padded_size(used: int, multiple: int) -> int:
    """`used` ids rounded up to a multiple of `multiple` (the embedding table's row count)."""
    return -(-used // multiple) * multiple


def range_mask(size: int, start: int, stop: int) -> np.ndarray:
    """bool [size], True on ids start .. stop-1."""
    mask = np.zeros(size, bool)
    mask[start:stop] = True
    return mask


def sentinel(index: int) -> str:
    """Name of the CM3 sentinel number `index`: <mask:index>."""
    return f"<mask:{index}>"


@dataclasses.dataclass(frozen=True)
class Text:
    text: str


@dataclasses.dataclass(frozen=True, eq=False)
class Image:
    codes: np.ndarray  # int [h, w]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Image) and np.array_equal(self.codes, other.codes)

    def __repr__(self) -> str:
        return f"Image(codes[{', '.join(map(str, np.shape(self.codes)))}])"


@dataclasses.dataclass(frozen=True)
class Special:
    name: str  # one of the special token names, e.g. "<mask>" or "<mask:3>"


Item = Union[Text, Image, Special]


class Vocabulary:
    """The id layout plus the text tokenizer; knows the VQ-GAN by its export path."""

    def __init__(self, text_tokenizer: TextTokenizer, codebook_size: int,
                 code_shape: tuple[int, int], image_tokenizer_path: str = "",
                 config: VocabConfig = VocabConfig()):
        if codebook_size < 2:
            raise ValueError(f"codebook_size must be >= 2, got {codebook_size}")
        if len(code_shape) != 2 or min(code_shape) < 1:
            raise ValueError(f"code_shape must be (h, w) with h, w >= 1, got {code_shape}")
        self.text_tokenizer = text_tokenizer
        self.config = config
        self.codebook_size = int(codebook_size)
        self.code_shape = (int(code_shape[0]), int(code_shape[1]))
        self.image_tokenizer_path = str(image_tokenizer_path)
        self.special_tokens = STRUCTURAL + tuple(sentinel(i)
                                                 for i in range(config.num_mask_sentinels))
        self._special_ids = {name: index for index, name in enumerate(self.special_tokens)}
        self.text_offset = len(self.special_tokens)
        self.text_size = text_tokenizer.vocab_size
        self.image_offset = self.text_offset + self.text_size
        self.used_size = self.image_offset + self.codebook_size
        self.vocab_size = padded_size(self.used_size, config.pad_to_multiple)

    # ------------------------------------------------------------------------------ ids ------

    def special_id(self, name: str) -> int:
        if name not in self._special_ids:
            raise KeyError(f"unknown special token {name!r}; known: "
                           f"{', '.join(self.special_tokens)}")
        return self._special_ids[name]

    @property
    def pad_id(self) -> int:
        return self._special_ids[PAD]

    @property
    def eos_id(self) -> int:
        return self._special_ids[EOS]

    @property
    def break_id(self) -> int:
        return self._special_ids[BREAK]

    @property
    def mask_id(self) -> int:
        return self._special_ids[MASK]

    @property
    def boi_id(self) -> int:
        return self._special_ids[BOI]

    @property
    def eoi_id(self) -> int:
        return self._special_ids[EOI]

    def sentinel_id(self, index: int) -> int:
        if not 0 <= index < self.config.num_mask_sentinels:
            raise ValueError(f"sentinel index must be in [0, {self.config.num_mask_sentinels}), "
                             f"got {index}")
        return self._special_ids[sentinel(index)]

    @property
    def sentinel_ids(self) -> np.ndarray:
        return np.arange(len(STRUCTURAL), self.text_offset, dtype=np.int32)

    @property
    def tokens_per_image(self) -> int:
        """Ids one image occupies: <boi> + h*w codes + <eoi>."""
        return self.code_shape[0] * self.code_shape[1] + 2

    # ----------------------------------------------------------------------------- masks -----

    def special_mask(self) -> np.ndarray:
        """bool [vocab_size]: the special tokens (structural and sentinels)."""
        return range_mask(self.vocab_size, 0, self.text_offset)

    def text_mask(self) -> np.ndarray:
        """bool [vocab_size]: text piece ids."""
        return range_mask(self.vocab_size, self.text_offset, self.image_offset)

    def image_mask(self) -> np.ndarray:
        """bool [vocab_size]: image code ids."""
        return range_mask(self.vocab_size, self.image_offset, self.used_size)

    def is_text(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids)
        return (ids >= self.text_offset) & (ids < self.image_offset)

    def is_image(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids)
        return (ids >= self.image_offset) & (ids < self.used_size)

    # -------------------------------------------------------------------------- encoding -----

    def encode_text(self, text: str) -> list[int]:
        return [self.text_offset + i for i in self.text_tokenizer.encode(text)]

    def decode_text(self, ids: Iterable[int]) -> str:
        ids = np.asarray(list(ids), np.int64)
        if ids.size and not np.all(self.is_text(ids)):
            raise ValueError(f"decode_text got non-text ids {ids[~self.is_text(ids)][:5].tolist()}"
                             f" (text ids are [{self.text_offset}, {self.image_offset}))")
        return self.text_tokenizer.decode((ids - self.text_offset).tolist())

    def image_ids(self, codes: np.ndarray) -> list[int]:
        """<boi> + row-major code ids + <eoi> for codes [h, w]."""
        codes = np.asarray(codes)
        if codes.shape != self.code_shape:
            raise ValueError(f"image codes must have shape {self.code_shape}, got {codes.shape}")
        if not np.issubdtype(codes.dtype, np.integer):
            raise ValueError(f"image codes must be integers, got dtype {codes.dtype}")
        if codes.size and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(f"image codes must be in [0, {self.codebook_size}), got "
                             f"[{codes.min()}, {codes.max()}]")
        return [self.boi_id, *(self.image_offset + codes.reshape(-1)).tolist(), self.eoi_id]

    def encode_item(self, item: Item) -> list[int]:
        if isinstance(item, Text):
            return self.encode_text(item.text)
        if isinstance(item, Image):
            return self.image_ids(item.codes)
        if isinstance(item, Special):
            return [self.special_id(item.name)]
        raise TypeError(f"document items are Text, Image or Special, got {type(item).__name__}")

    def encode_document(self, document: Sequence[Item], add_eos: bool = False) -> np.ndarray:
        """int32 ids of the items joined by <break> (and a final <eos> if asked)."""
        ids: list[int] = []
        for index, item in enumerate(document):
            if index:
                ids.append(self.break_id)
            ids.extend(self.encode_item(item))
        if add_eos:
            ids.append(self.eos_id)
        return np.asarray(ids, np.int32)

    def decode_document(self, ids: Iterable[int], strict: bool = True) -> list[Item]:
        """Items of an id sequence: ends at <eos>, skips <pad>, splits at <break>, <boi>/<eoi>.

        Each <break>-separated segment yields its items (an empty segment is `Text("")`, so
        `decode_document(encode_document(doc)) == doc` for every document except `[Text("")]`,
        which has no ids and decodes to `[]`). An image must be
        <boi>, exactly h*w codes, <eoi>; with `strict=False` malformed images and stray codes are
        dropped instead of raising ValueError (for generated sequences).
        """
        tokens: list[int] = []
        for token in ids:
            token = int(token)
            if token == self.eos_id:
                break
            if token != self.pad_id:
                tokens.append(token)
        if not tokens:
            return []
        items: list[Item] = []
        segment: list[int] = []
        for token in tokens + [self.break_id]:
            if token == self.break_id:
                items.extend(self._decode_segment(segment, strict) or [Text("")])
                segment = []
            else:
                segment.append(token)
        return items

    def _decode_segment(self, segment: list[int], strict: bool) -> list[Item]:
        items: list[Item] = []
        text: list[int] = []
        position = 0

        def flush_text() -> None:
            if text:
                items.append(Text(self.decode_text(text)))
                text.clear()

        def problem(message: str) -> None:
            if strict:
                raise ValueError(message)

        while position < len(segment):
            token = segment[position]
            if self.text_offset <= token < self.image_offset:
                text.append(token)
                position += 1
            elif token == self.boi_id:
                flush_text()
                count = self.code_shape[0] * self.code_shape[1]
                body = segment[position + 1:position + 1 + count]
                closed = (position + 1 + count < len(segment)
                          and segment[position + 1 + count] == self.eoi_id)
                if len(body) == count and closed and all(self.image_offset <= t < self.used_size
                                                         for t in body):
                    codes = np.asarray(body, np.int32).reshape(self.code_shape) - self.image_offset
                    items.append(Image(codes))
                    position += count + 2
                else:
                    problem(f"malformed image at <boi> (segment position {position}): expected "
                            f"{count} image codes then <eoi>")
                    end = segment.index(self.eoi_id, position) if self.eoi_id in segment[
                        position:] else len(segment)
                    position = end + 1
            elif 0 <= token < self.text_offset:
                flush_text()
                if token == self.eoi_id:
                    problem(f"<eoi> without <boi> (segment position {position})")
                else:
                    items.append(Special(self.special_tokens[token]))
                position += 1
            else:
                problem(f"id {token} is not a text or special id here (image codes only appear "
                        f"between <boi> and <eoi>; ids >= {self.used_size} are padding)")
                position += 1
        flush_text()
        return items

    # ------------------------------------------------------------------------------ files -----

    @classmethod
    def build(cls, text_tokenizer: TextTokenizer, image_tokenizer_path: str,
              config: VocabConfig = VocabConfig()) -> "Vocabulary":
        """A vocabulary for a trained text tokenizer and a VQ-GAN export (read for its sizes)."""
        from cm3leon_jax.tokenizers.image_tokenizer import read_config  # noqa: PLC0415

        vqgan = read_config(image_tokenizer_path)
        return cls(text_tokenizer, vqgan.codebook_size,
                   (vqgan.code_grid_size, vqgan.code_grid_size), str(image_tokenizer_path),
                   config)

    def save(self, directory: str | epath.Path) -> epath.Path:
        directory = epath.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.text_tokenizer.save(directory / TEXT_MODEL_FILE)
        image_path = self.image_tokenizer_path
        if image_path:
            absolute = os.path.abspath(image_path)
            inside = os.path.relpath(absolute, os.path.abspath(directory))
            image_path = inside if not inside.startswith("..") else absolute
        layout = {
            "format_version": FORMAT_VERSION,
            "special_tokens": list(self.special_tokens),
            "text_model": TEXT_MODEL_FILE,
            "text_offset": self.text_offset,
            "text_size": self.text_size,
            "image_offset": self.image_offset,
            "codebook_size": self.codebook_size,
            "image_code_shape": list(self.code_shape),
            "image_tokenizer": image_path,
            "used_size": self.used_size,
            "vocab_size": self.vocab_size,
            "num_mask_sentinels": self.config.num_mask_sentinels,
            "pad_to_multiple": self.config.pad_to_multiple,
        }
        (directory / VOCAB_FILE).write_text(json.dumps(layout, indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | epath.Path) -> "Vocabulary":
        directory = epath.Path(directory)
        if not (directory / VOCAB_FILE).exists():
            raise FileNotFoundError(f"{directory} holds no vocabulary ({VOCAB_FILE} missing)")
        layout = json.loads((directory / VOCAB_FILE).read_text())
        if layout.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{directory / VOCAB_FILE}: format_version "
                             f"{layout.get('format_version')!r}, this code reads {FORMAT_VERSION}")
        text = TextTokenizer.load(directory / layout["text_model"])
        image_path = layout["image_tokenizer"]
        if image_path and not os.path.isabs(image_path):
            image_path = str(directory / image_path)
        config = VocabConfig(num_mask_sentinels=layout["num_mask_sentinels"],
                             pad_to_multiple=layout["pad_to_multiple"])
        vocab = cls(text, layout["codebook_size"], tuple(layout["image_code_shape"]), image_path,
                    config)
        for key in ("text_offset", "text_size", "image_offset", "used_size", "vocab_size"):
            if getattr(vocab, key) != layout[key]:
                raise ValueError(f"{directory / VOCAB_FILE}: {key}={layout[key]} but the files "
                                 f"give {getattr(vocab, key)} (text.model replaced?)")
        return vocab

    def image_tokenizer(self, batch_size: int = 64):
        """The VQ-GAN this vocabulary's image codes come from (an `ImageTokenizer`)."""
        from cm3leon_jax.tokenizers.image_tokenizer import ImageTokenizer  # noqa: PLC0415

        if not self.image_tokenizer_path:
            raise ValueError("this vocabulary was built without an image tokenizer path")
        tokenizer = ImageTokenizer.load(self.image_tokenizer_path, batch_size=batch_size)
        if (tokenizer.codebook_size, tokenizer.code_shape) != (self.codebook_size,
                                                               self.code_shape):
            raise ValueError(f"image tokenizer at {self.image_tokenizer_path} has codebook "
                             f"{tokenizer.codebook_size} and codes {tokenizer.code_shape}; the "
                             f"vocabulary expects {self.codebook_size} and {self.code_shape}")
        return tokenizer

    @property
    def fingerprint(self) -> str:
        """sha256 of what gives every id its meaning: the layout, the text tokenizer's model and
        the VQ-GAN's files (not where they lie, so a copied vocabulary keeps its fingerprint).
        A model trained on one vocabulary is refused data prepared with another."""
        digest = hashlib.sha256(json.dumps({
            "special": list(self.special_tokens), "text_size": self.text_size,
            "codebook_size": self.codebook_size, "code_shape": list(self.code_shape),
            "vocab_size": self.vocab_size}, sort_keys=True).encode())
        digest.update(self.text_tokenizer.model_proto)
        if self.image_tokenizer_path:
            from cm3leon_jax.tokenizers import image_tokenizer  # noqa: PLC0415

            for name in (image_tokenizer.CONFIG_FILE, image_tokenizer.VARIABLES_FILE):
                digest.update((epath.Path(self.image_tokenizer_path) / name).read_bytes())
        return digest.hexdigest()

    def __repr__(self) -> str:
        return (f"Vocabulary(special={self.text_offset}, text={self.text_size}, "
                f"image={self.codebook_size}x{self.code_shape}, vocab_size={self.vocab_size})")

