"""Retrieval-augmented prompting: the documents the retriever finds for a prompt, as token ids.

CM3leon pretrains on `ret_1 <break> ret_2 <break> query` and generates the same way: the paper's
best zero-shot FID uses 2 retrieved documents at inference. So, when the workdir holds a retrieval
index (`python -m cm3leon_jax.retrieval.build_index`), generation with the pretrained model (the
SFT model only on request: `Generator.retrieval_by_default`) embeds the prompt with the same
bi-encoder, applies the same selection rules as data preparation (`retrieval/rules.py`:
relevance, modality, diversity; no query dropout at inference) and prepends the chosen documents.

The index stores embeddings and document ids only; the documents' tokens live in the prepared
shards of the split the index was built over (the train split). `DocumentStore` finds a
document's shard through the sidecar files of the shards the manifest lists (each names its
document ids) and reads only the shards it needs, once. A bank document without a prepared record
(refused by the licence policy, or removed since) is skipped, as `prepare` skips it.
"""

from __future__ import annotations

import json
from typing import Optional, Sequence

from etils import epath
import ml_collections
import numpy as np

from cm3leon_jax import config as config_lib, paths
from cm3leon_jax.data.input import layout, sft_tasks
from cm3leon_jax.data.input.cm3 import SpecialIds
from cm3leon_jax.retrieval import encoder, index, rules

INDEX_SPLIT = "train"  # build_index embeds the train split


class DocumentStore:
    """Text and image ids of prepared documents, by document id (read lazily per shard)."""

    def __init__(self, prepared: str | epath.Path, split: str = INDEX_SPLIT):
        self.prepared, self.split = epath.Path(prepared), split
        self.directory = self.prepared / split
        self._shard_of: Optional[dict[str, str]] = None
        self._documents: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._read: set[str] = set()

    def _index(self) -> dict[str, str]:
        from cm3leon_jax.data.offline import shards

        if self._shard_of is None:
            self._shard_of = {}
            listed = shards.read_manifest(self.prepared)["splits"].get(self.split, {})
            for shard in listed.get("shards", []):
                sidecar = shards.sidecar_path(self.directory / shard["name"])
                info = shards.ShardInfo(**json.loads(sidecar.read_text()))
                for document_id in info.document_ids:
                    self._shard_of[document_id] = info.name
        return self._shard_of

    def _read_shard(self, name: str) -> None:
        import tensorflow as tf  # noqa: PLC0415 - TFRecord reading only when retrieval is used

        from cm3leon_jax.data.offline import shards  # noqa: PLC0415

        for serialized in tf.data.TFRecordDataset(str(self.directory / name)).as_numpy_iterator():
            record = shards.parse_numpy(serialized)
            self._documents[record["id"]] = (record["text"], record["image"])
        self._read.add(name)

    def get(self, document_id: str) -> Optional[tuple[np.ndarray, np.ndarray]]:
        """(text ids, image ids as stored) of a prepared document, None if it has no record."""
        name = self._index().get(document_id)
        if name is None:
            return None
        if name not in self._read:
            self._read_shard(name)
        return self._documents.get(document_id)


class PromptRetriever:
    """Finds documents for prompts and returns them as `layout.Document`s (ids)."""

    def __init__(self, finder, store: DocumentStore, special: SpecialIds):
        """finder: a `cm3leon_jax.retrieval.retriever.Retriever` (encoder + index + rules)."""
        self.finder, self.store, self.special = finder, store, special

    @classmethod
    def from_workdir(cls, workdir: str, cfg: Optional[ml_collections.ConfigDict],
                     special: SpecialIds) -> Optional["PromptRetriever"]:
        """The retriever of `workdir`, or None when it has no retrieval index (or encoder).

        Paths follow the run's config (`retrieval.encoder_dir` / `index_dir`, default
        `<workdir>/retrieval_encoder` and `<workdir>/retrieval_index`).
        """
        retrieval = (config_lib.retrieval_config(cfg) if cfg is not None and "retrieval" in cfg
                     else config_lib.RetrievalConfig())
        index_path = index.index_dir(retrieval, workdir)
        encoder_path = encoder.encoder_dir(retrieval, workdir)
        if not (index_path / index.MANIFEST).exists():
            return None
        if not (encoder_path / encoder.ARCHITECTURE_FILE).exists():
            raise FileNotFoundError(f"{index_path} holds a retrieval index but {encoder_path} no "
                                    "encoder to embed prompts with; pass --no_retrieval or train "
                                    "it: python -m cm3leon_jax.retrieval.train_encoder ...")
        from cm3leon_jax.retrieval import retriever  # noqa: PLC0415 - imports TensorFlow

        biencoder = encoder.load_trained(encoder_path)
        bank = index.RetrievalIndex.load(index_path, encoder_fingerprint=biencoder.fingerprint,
                                         search_batch_size=retrieval.search_batch_size)
        finder = retriever.Retriever(biencoder, bank, rules.Rules.from_config(retrieval),
                                     retrieval.num_candidates)
        return cls(finder, DocumentStore(paths.Workdir(workdir).prepared), special)

    @property
    def biencoder(self) -> encoder.BiEncoder:
        return self.finder.biencoder

    def documents(self, texts: Optional[Sequence[str]] = None,
                  images: Optional[np.ndarray] = None) -> list[list[layout.Document]]:
        """Per query, its retrieved documents in rank order (best first)."""
        rows = self.finder.retrieve(texts, images)
        found = []
        for query_rows in rows:
            documents = []
            for row in query_rows:
                if row < 0:
                    continue
                record = self.store.get(self.finder.bank.document_ids[row])
                if record is None:
                    continue
                text, image = record
                documents.append(layout.Document(
                    text=text, image=sft_tasks.strip_image_markers(image, self.special)))
            found.append(documents)
        return found


def fit_documents(documents: Sequence[layout.Document], budget: int, special: SpecialIds,
                  image_first: bool) -> list[layout.Document]:
    """The leading documents whose rendering (each plus its `<break>`) fits `budget` tokens:
    the least relevant (last) go first, as in training (`data/input/pipeline.pretrain_example`)."""
    kept = list(documents)
    while kept and sum(len(layout.render_document(d, special, image_first)) + 1
                       for d in kept) > budget:
        kept.pop()
    return kept

