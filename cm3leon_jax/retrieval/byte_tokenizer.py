"""The retriever's own text tokenizer: UTF-8 bytes plus BOS/EOS, padded to a fixed length.

Retrieval must not depend on the project's BPE text tokenizer (a separate stage, trained later and
replaceable), so the bi-encoder we train reads raw bytes: id = byte value (0..255), then
`BOS_ID` = 256, `EOS_ID` = 257 and `PAD_ID` = 258, vocabulary 259. A caption becomes
`[BOS, b_0, …, b_n, EOS, PAD, …]` of exactly `max_length` ids; captions longer than `max_length - 2`
bytes are truncated (EOS is always kept, the text tower pools its output at EOS). Truncation may cut a
multi-byte character in two, which is harmless for an embedding model.

A Hugging Face CLIP checkpoint imported with `encoder.load_hf_clip` brings its own BPE vocabulary; use
its tokenizer (`transformers.CLIPTokenizer` from the same local directory) for such a model.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

BYTE_VALUES = 256
BOS_ID = 256
EOS_ID = 257
PAD_ID = 258
VOCAB_SIZE = 259


def encode(texts: Sequence[str | bytes], max_length: int) -> np.ndarray:
    """Token ids int32 [len(texts), max_length] for a batch of texts (str or UTF-8 bytes)."""
    if max_length < 3:
        raise ValueError(f"max_length={max_length}: needs room for BOS, one byte and EOS")
    ids = np.full((len(texts), max_length), PAD_ID, dtype=np.int32)
    for row, text in enumerate(texts):
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        data = data[:max_length - 2]
        ids[row, 0] = BOS_ID
        ids[row, 1:1 + len(data)] = np.frombuffer(data, dtype=np.uint8)
        ids[row, 1 + len(data)] = EOS_ID
    return ids


def decode(ids: np.ndarray) -> str:
    """The text of one row of ids (special ids dropped; invalid UTF-8 replaced)."""
    values = [int(i) for i in np.asarray(ids).reshape(-1) if 0 <= int(i) < BYTE_VALUES]
    return bytes(values).decode("utf-8", errors="replace")


def has_text(ids: np.ndarray) -> np.ndarray:
    """bool [batch]: whether each row holds a byte (an empty caption counts as no text)."""
    ids = np.asarray(ids)
    return ((ids >= 0) & (ids < BYTE_VALUES)).any(axis=-1)


def tf_encode(text, max_length: int):
    """`encode` for one tf.string scalar inside a tf.data pipeline (same ids as the numpy path)."""
    import tensorflow as tf

    data = tf.cast(tf.io.decode_raw(text, tf.uint8), tf.int32)[:max_length - 2]
    ids = tf.concat([[BOS_ID], data, [EOS_ID]], axis=0)
    ids = tf.pad(ids, [[0, max_length - tf.shape(ids)[0]]], constant_values=PAD_ID)
    return tf.ensure_shape(ids, [max_length])
