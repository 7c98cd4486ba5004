"""Documents of a split, tokenized for the bi-encoder and embedded in batches.

Reads through `cm3leon_jax.data.sources.catalog.load` (every source), tokenizes captions with the
byte tokenizer inside tf.data and yields numpy batches; `embed_split` turns them into document
embeddings (`encoder.combine_modalities`), optionally with the query dropout of the rules (training queries).

Modality: a document has text when its caption is non-empty; every document of the current sources
has an image (a source without one would set `has_image` False per example).
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Optional

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from cm3leon_jax.config import DataConfig
from cm3leon_jax.data.sources import catalog
from cm3leon_jax.progress import Progress
from cm3leon_jax.retrieval import byte_tokenizer, rules
from cm3leon_jax.retrieval.encoder import BiEncoder


@dataclasses.dataclass
class EmbeddedCorpus:
    document_ids: list[str]
    embeddings: np.ndarray  # float32 [N, D] unit vectors
    multimodal: np.ndarray  # bool [N]
    provenance: list[dict]  # each document's {"source", "license"} (empty when unknown)

    def __len__(self) -> int:
        return len(self.document_ids)


def tokenized(data: DataConfig, workdir: str, split: str, text_max_length: int) -> tf.data.Dataset:
    """Examples as dicts: "id", "token_ids" int32 [L], "image" uint8 [S, S, 3], "has_text",
    "has_image", "source", "license"."""

    def convert(example):
        return {
            "id": example["id"],
            "source": example.get("source", tf.constant("")),
            "license": example.get("license", tf.constant("")),
            "token_ids": byte_tokenizer.tf_encode(example["caption"], text_max_length),
            "image": example["image"],
            "has_text": tf.strings.length(example["caption"]) > 0,
            "has_image": example.get("has_image", tf.constant(True)),
        }

    return catalog.load(data, workdir, split).map(convert, num_parallel_calls=tf.data.AUTOTUNE)


def batches(data: DataConfig, workdir: str, split: str, text_max_length: int, batch_size: int
            ) -> Iterator[dict]:
    """Numpy batches of `tokenized` in split order (the last one may be smaller); ids, sources
    and licences as str."""
    dataset = tokenized(data, workdir, split, text_max_length).batch(batch_size)
    for batch in tfds.as_numpy(dataset.prefetch(2)):
        for key in ("id", "source", "license"):
            batch[key] = [value.decode("utf-8") for value in batch[key]]
        yield batch


def documents_batch(documents: list[dict], text_max_length: int) -> dict:
    """Plain documents (the Beam pipelines' dicts: "id", "caption", "image", ...) as the numpy
    batch `batches` yields (same token ids as its tf.data path)."""
    return {"id": [d["id"] for d in documents],
            "token_ids": byte_tokenizer.encode([d["caption"] for d in documents], text_max_length),
            "image": np.stack([d["image"] for d in documents]),
            "has_text": np.asarray([len(d["caption"]) > 0 for d in documents]),
            "has_image": np.asarray([bool(d.get("has_image", True)) for d in documents]),
            "source": [d.get("source", "") for d in documents],
            "license": [d.get("license", "") for d in documents]}


def embed_batch(biencoder: BiEncoder, batch: dict, query_dropout: float = 0.0,
                dropout_seed: int = 0) -> np.ndarray:
    """Document embeddings of one batch; with `query_dropout` > 0 its rules' dropout is applied,
    keyed by each document's id (`rules.document_id_keys`), so the result depends neither on the
    batching nor on the document's position in the split."""
    token_ids, keep = batch["token_ids"], None
    if query_dropout > 0:
        keys = rules.document_id_keys(dropout_seed, batch["id"])
        token_ids = rules.drop_text_tokens(keys, token_ids, query_dropout)
        keep = rules.patch_keep_masks(keys, biencoder.arch.num_patches, query_dropout)
    return biencoder.embed_documents(token_ids, batch["image"], batch["has_text"],
                                     batch["has_image"], keep)


def check_byte_encoder(biencoder: BiEncoder) -> None:
    if biencoder.arch.text_vocab_size != byte_tokenizer.VOCAB_SIZE:
        raise ValueError(
            f"encoder {biencoder.model_id!r} has a {biencoder.arch.text_vocab_size}-entry text "
            f"vocabulary, not the byte tokenizer's {byte_tokenizer.VOCAB_SIZE}: corpus embedding "
            "tokenizes captions as bytes, so it needs an encoder trained by train_encoder.py")


def embed_split(biencoder: BiEncoder, data: DataConfig, workdir: str, split: str,
                batch_size: int, query_dropout: float = 0.0, dropout_seed: int = 0,
                what: Optional[str] = None) -> EmbeddedCorpus:
    """Every document of `split` embedded (row order = split order), with a progress line."""
    check_byte_encoder(biencoder)
    total = catalog.known_split_size(data, workdir, split)
    progress = Progress(what or f"embedding {split} documents", total=total, unit="documents")
    ids: list[str] = []
    embeddings, multimodal, origins = [], [], []
    for batch in batches(data, workdir, split, biencoder.arch.text_max_length, batch_size):
        embeddings.append(embed_batch(biencoder, batch, query_dropout, dropout_seed))
        multimodal.append(batch["has_text"] & batch["has_image"])
        ids.extend(batch["id"])
        origins.extend({"source": source, "license": license_}
                       for source, license_ in zip(batch["source"], batch["license"]))
        progress.update(len(batch["id"]))
    return EmbeddedCorpus(ids, np.concatenate(embeddings).astype(np.float32),
                          np.concatenate(multimodal), origins)
