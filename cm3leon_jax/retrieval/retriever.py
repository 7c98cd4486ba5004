"""Online use of the retriever at generation time: neighbours of a prompt, and CLIP scores.

Training never queries the index online (data preparation stores neighbour tables, see
`neighbours.py`); generation does, once per prompt, to put k retrieved documents before it (the
paper's FID improves with 2 retrieved documents at inference), and reranks sampled images by the
cosine between the prompt's and the image's embeddings.

    retriever = Retriever.from_config(cfg, workdir)
    rows = retriever.retrieve(texts=["a small red circle at the top"])   # int32 [1, k] bank rows
    ids = retriever.retrieve_ids(texts=[...])                           # their document ids
    scores = text_image_scores(retriever.biencoder, texts, images)      # float32 [n]
"""

from __future__ import annotations

from typing import Optional, Sequence

import ml_collections
import numpy as np

from cm3leon_jax import config
from cm3leon_jax.data.offline import provenance
from cm3leon_jax.retrieval import byte_tokenizer, corpus, encoder, index, neighbour_table, rules


def _tokens(biencoder: encoder.BiEncoder, texts: Sequence[str]) -> np.ndarray:
    corpus.check_byte_encoder(biencoder)
    return byte_tokenizer.encode(texts, biencoder.arch.text_max_length)


def embed_queries(biencoder: encoder.BiEncoder, texts: Optional[Sequence[str]] = None,
                  images: Optional[np.ndarray] = None) -> np.ndarray:
    """Document embeddings of prompts: text only, image only (uint8 [n, S, S, 3]) or both."""
    if texts is None and images is None:
        raise ValueError("a query needs texts, images or both")
    count = len(texts) if texts is not None else len(images)
    if texts is not None and images is not None and len(images) != count:
        raise ValueError(f"{len(texts)} texts but {len(images)} images")
    size, channels = biencoder.arch.image_size, biencoder.arch.num_channels
    token_ids = _tokens(biencoder, texts if texts is not None else [""] * count)
    pixels = images if images is not None else np.zeros((count, size, size, channels), np.uint8)
    return biencoder.embed_documents(token_ids, pixels, np.full(count, texts is not None),
                                     np.full(count, images is not None))


def text_image_scores(biencoder: encoder.BiEncoder, texts: Sequence[str], images: np.ndarray
                      ) -> np.ndarray:
    """float32 [n]: cosine of text i with image i (CLIP reranking of generated images)."""
    text = biencoder.embed_texts(_tokens(biencoder, texts))
    image = biencoder.embed_images(images)
    return np.einsum("nd,nd->n", text, image)


def text_image_similarity(biencoder: encoder.BiEncoder, texts: Sequence[str], images: np.ndarray
                          ) -> np.ndarray:
    """float32 [len(texts), len(images)]: cosine of every text with every image (recall)."""
    return (biencoder.embed_texts(_tokens(biencoder, texts))
            @ biencoder.embed_images(images).T).astype(np.float32)


class Retriever:
    """The trained encoder, the saved index (checked to belong to it) and the rules."""

    def __init__(self, biencoder: encoder.BiEncoder, bank: index.RetrievalIndex,
                 selection: rules.Rules, num_candidates: int):
        self.biencoder, self.bank = biencoder, bank
        self.selection, self.num_candidates = selection, num_candidates

    @classmethod
    def from_config(cls, cfg: ml_collections.ConfigDict, workdir: str) -> "Retriever":
        retrieval = config.retrieval_config(cfg)
        biencoder = encoder.load_trained(encoder.encoder_dir(retrieval, workdir))
        bank = index.RetrievalIndex.load(index.index_dir(retrieval, workdir),
                                         encoder_fingerprint=biencoder.fingerprint,
                                         search_batch_size=retrieval.search_batch_size)
        policy = provenance.Policy.of_workdir(config.data_config(cfg), workdir)
        refused = index.refused_rows(bank.document_ids, bank.provenance, policy.verdict)
        if refused:
            raise index.IndexMismatch(
                f"the retrieval index in {workdir} still holds {len(refused)} documents the data "
                f"policy refuses ({sorted(set(refused.values()))}), which generation must never "
                "retrieve; run `python -m cm3leon_jax.data.prepare` again (it drops them from the "
                "index), or " + index.REBUILD_HINT)
        return cls(biencoder, bank, rules.Rules.from_config(retrieval), retrieval.num_candidates)

    def retrieve(self, texts: Optional[Sequence[str]] = None,
                 images: Optional[np.ndarray] = None) -> np.ndarray:
        """int32 [n, k] bank rows for n prompts (no query dropout; -1 = fewer than k)."""
        queries = embed_queries(self.biencoder, texts, images)
        return neighbour_table.compute_neighbours(self.bank, queries, self.selection,
                                             num_candidates=self.num_candidates)

    def retrieve_ids(self, texts: Optional[Sequence[str]] = None,
                     images: Optional[np.ndarray] = None) -> list[list[str]]:
        return [[self.bank.document_ids[r] for r in row if r >= 0]
                for row in self.retrieve(texts, images)]
