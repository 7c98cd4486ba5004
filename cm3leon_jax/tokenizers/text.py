"""Text tokenizer: a sentencepiece BPE model the project trains itself, with byte fallback.

    tokenizer = TextTokenizer.train(sentences, TextTokenizerConfig(vocab_size=512))
    ids = tokenizer.encode("a red circle 🙂")     # list[int] in [0, tokenizer.vocab_size)
    tokenizer.decode(ids) == "a red circle 🙂"
    tokenizer.save("dir/text.model"); TextTokenizer.load("dir/text.model")

Choices that make `decode(encode(text)) == text` hold for *every* string (tested on emoji, CJK,
control characters, repeated and leading/trailing spaces):

* byte_fallback: a character without its own piece is spelled as UTF-8 byte pieces <0x..>, so
  nothing is ever <unk>;
* normalization `identity`, no dummy prefix, no whitespace collapsing: sentencepiece's defaults
  (NFKC, extra-whitespace removal) would silently change text;
* only <unk> among sentencepiece's own specials (no <s>, </s>, <pad>): the special tokens of the
  model's stream live in the unified vocabulary (`cm3leon_jax/vocab.py`), not here.

Training reads sentences from an iterator in memory and writes the model to memory (no temporary
files). The model file is sentencepiece's own `.model` protobuf.
"""

from __future__ import annotations

import io
from typing import Iterable, Iterator, Sequence

from etils import epath
import sentencepiece as spm

from cm3leon_jax.config import TextTokenizerConfig

# Sentencepiece refuses sentences longer than this (in bytes); longer corpus lines are cut into
# pieces of at most this length, at character boundaries.
MAX_SENTENCE_BYTES = 4192


def _bounded(sentences: Iterable[str]) -> Iterator[str]:
    """Drops empty lines and cuts over-long ones so sentencepiece sees every byte of the corpus."""
    for sentence in sentences:
        while len(sentence.encode("utf-8")) > MAX_SENTENCE_BYTES:
            cut = MAX_SENTENCE_BYTES // 4  # 4 bytes per character at most: always fits
            yield sentence[:cut]
            sentence = sentence[cut:]
        if sentence:
            yield sentence


def file_sentences(path: str | epath.Path) -> Iterator[str]:
    """Lines of a UTF-8 text file (a user's corpus), without their line endings."""
    with epath.Path(path).open("r") as file:
        for line in file:
            yield line.rstrip("\r\n")


class TextTokenizer:
    """A loaded sentencepiece model; ids are sentencepiece ids (0 = <unk>, 1..256 = bytes)."""

    def __init__(self, model_proto: bytes):
        self.model_proto = bytes(model_proto)
        self.processor = spm.SentencePieceProcessor(model_proto=self.model_proto)

    @classmethod
    def train(cls, sentences: Iterable[str], config: TextTokenizerConfig) -> "TextTokenizer":
        """Trains on `sentences` (any iterable of str) with the config's vocabulary size."""
        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=_bounded(sentences), model_writer=model,
                vocab_size=config.vocab_size, model_type=config.model_type,
                character_coverage=config.character_coverage, byte_fallback=True,
                normalization_rule_name="identity", add_dummy_prefix=False,
                remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
                split_digits=config.split_digits, unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1,
                input_sentence_size=config.max_sentences, shuffle_input_sentence=True,
                max_sentence_length=MAX_SENTENCE_BYTES,
                # A small corpus may support fewer merges than asked for; take what it has.
                hard_vocab_limit=False, num_threads=2, minloglevel=2)
        except RuntimeError as error:
            raise ValueError(f"sentencepiece training failed (text_tokenizer.vocab_size="
                             f"{config.vocab_size}, model_type={config.model_type!r}): {error}"
                             ) from error
        return cls(model.getvalue())

    @classmethod
    def train_from_file(cls, path: str | epath.Path, config: TextTokenizerConfig
                        ) -> "TextTokenizer":
        return cls.train(file_sentences(path), config)

    @classmethod
    def load(cls, path: str | epath.Path) -> "TextTokenizer":
        path = epath.Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no sentencepiece model at {path}")
        return cls(path.read_bytes())

    def save(self, path: str | epath.Path) -> epath.Path:
        path = epath.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.model_proto)
        return path

    @property
    def vocab_size(self) -> int:
        return self.processor.get_piece_size()

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        return self.processor.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"text ids must be in [0, {self.vocab_size}), got {bad[:5]}")
        return self.processor.decode(ids)

    def piece(self, token_id: int) -> str:
        return self.processor.id_to_piece(int(token_id))
