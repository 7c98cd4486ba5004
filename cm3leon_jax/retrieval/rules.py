"""What may be retrieved for a query document (CM3leon §2.1, after RA-CM3).

Given a query's top candidates from the memory bank, `select_neighbours` keeps k of them by four
rules, applied greedily in order of preference:

* itself — the query's own row of the memory bank is never retrieved;
* relevance — a candidate whose cosine score with the query exceeds `relevance_threshold` (0.9) is
  a near-duplicate of the query and is skipped (it would teach copying, not using context);
* modality — with `prefer_multimodal`, every eligible image+text document comes before any
  single-modality one; within a group the higher score comes first;
* diversity — a candidate whose cosine score with an already chosen neighbour exceeds
  `diversity_threshold` is skipped (two retrieved copies of one thing waste context).

Rows are bank indices (int32), -1 where fewer than k candidates survive. Neighbours are returned in
the order chosen (most preferred first). Scores are recomputed exactly from the embeddings, so the
rules do not depend on how approximate the index's own scores are.

Query dropout (training only): before a training document is embedded as a query, 20% of its tokens
are dropped (`drop_text_tokens`: that share of the caption's bytes, the rest moved up so the text
stays contiguous; `patch_keep_masks`: that share of the image's ViT patches, removed from attention).
Each document's dropout depends only on (seed, its document id) (`document_id_keys`: a sha256 of
the id, never its position), so results depend neither on batching nor on workers or split order.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cm3leon_jax.config import RetrievalConfig
from cm3leon_jax.retrieval import byte_tokenizer

# Added to the score of multimodal candidates when they are preferred: scores are cosines in
# [-1, 1], so every multimodal candidate outranks every single-modality one.
_MULTIMODAL_BONUS = 4.0


@dataclasses.dataclass(frozen=True)
class Rules:
    k: int = 2
    relevance_threshold: float = 0.9
    diversity_threshold: float = 0.9
    prefer_multimodal: bool = True

    @classmethod
    def from_config(cls, retrieval: RetrievalConfig) -> "Rules":
        return cls(k=retrieval.k, relevance_threshold=retrieval.relevance_threshold,
                   diversity_threshold=retrieval.diversity_threshold,
                   prefer_multimodal=retrieval.prefer_multimodal)


@functools.partial(jax.jit, static_argnames=("k", "prefer_multimodal"))
def _select(query_embeddings, candidate_rows, candidate_embeddings, candidate_multimodal,
            query_rows, relevance_threshold, diversity_threshold, *, k, prefer_multimodal):
    num_candidates = candidate_rows.shape[1]
    scores = jnp.einsum("bd,bmd->bm", query_embeddings, candidate_embeddings)
    pairwise = jnp.einsum("bmd,bnd->bmn", candidate_embeddings, candidate_embeddings)
    eligible = ((candidate_rows >= 0) & (candidate_rows != query_rows[:, None])
                & (scores <= relevance_threshold))
    priority = scores + (_MULTIMODAL_BONUS * candidate_multimodal if prefer_multimodal else 0.0)
    chosen = []
    for _ in range(k):
        best = jnp.argmax(jnp.where(eligible, priority, -jnp.inf), axis=-1)
        found = eligible.any(axis=-1)
        chosen.append(jnp.where(found, jnp.take_along_axis(candidate_rows, best[:, None], 1)[:, 0],
                                -1))
        picked = jax.nn.one_hot(best, num_candidates, dtype=bool) & found[:, None]
        too_similar = jnp.take_along_axis(pairwise, best[:, None, None], axis=1)[:, 0] \
            > diversity_threshold
        eligible = eligible & ~picked & ~(too_similar & found[:, None])
    return jnp.stack(chosen, axis=-1).astype(jnp.int32)


def select_neighbours(query_embeddings: np.ndarray, candidate_rows: np.ndarray,
                      candidate_embeddings: np.ndarray, candidate_multimodal: np.ndarray,
                      rules: Rules, query_rows: np.ndarray | None = None) -> np.ndarray:
    """k bank rows per query (int32 [batch, k], -1 = none left) chosen by the rules above.

    query_embeddings: float [batch, dim], unit vectors.
    candidate_rows: int [batch, m] bank rows from the index (-1 = no candidate).
    candidate_embeddings: float [batch, m, dim] the candidates' bank embeddings.
    candidate_multimodal: bool [batch, m] whether each candidate has both image and text.
    query_rows: int [batch] each query's own bank row, -1 if it is not in the bank.
    """
    query_embeddings = np.asarray(query_embeddings, np.float32)
    batch = query_embeddings.shape[0]
    if query_rows is None:
        query_rows = np.full((batch,), -1, np.int32)
    return np.asarray(_select(
        jnp.asarray(query_embeddings), jnp.asarray(candidate_rows, jnp.int32),
        jnp.asarray(candidate_embeddings, jnp.float32), jnp.asarray(candidate_multimodal, bool),
        jnp.asarray(query_rows, jnp.int32), jnp.float32(rules.relevance_threshold),
        jnp.float32(rules.diversity_threshold), k=rules.k,
        prefer_multimodal=rules.prefer_multimodal))


# --------------------------------------------------------------------------------------------------
# Query dropout (training only)
# --------------------------------------------------------------------------------------------------

def document_keys(seed: int, rows: np.ndarray) -> jax.Array:
    """One PRNG key per document, from the seed and one integer per document only (`rows`: any
    uint32 values; `document_id_keys` derives them from the ids)."""
    base = jax.random.key(seed)
    return jax.vmap(lambda row: jax.random.fold_in(base, row))(jnp.asarray(rows, jnp.uint32))


def document_hashes(document_ids: Sequence[str]) -> np.ndarray:
    """uint32 [N, 2]: the first 64 bits of sha256(id) per document, stable across processes and
    Python versions (unlike `hash`)."""
    return np.asarray([np.frombuffer(hashlib.sha256(doc_id.encode("utf-8")).digest()[:8],
                                     np.uint32) for doc_id in document_ids],
                      np.uint32).reshape(-1, 2)


def document_id_keys(seed: int, document_ids: Sequence[str]) -> jax.Array:
    """One PRNG key per document from the seed and its id only: the query dropout of a document
    is the same whatever batch, worker or split position it comes in."""
    hashes = jnp.asarray(document_hashes(document_ids))
    base = jax.random.key(seed)
    return jax.vmap(lambda h: jax.random.fold_in(jax.random.fold_in(base, h[0]), h[1]))(hashes)


def _drop_count(count: jax.Array, rate: float) -> jax.Array:
    return jnp.floor(count.astype(jnp.float32) * rate).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("rate",))
def drop_text_tokens(keys: jax.Array, token_ids: jax.Array, rate: float) -> jax.Array:
    """Byte-tokenizer ids [batch, length] with floor(rate x bytes) bytes of each row dropped.

    BOS/EOS stay; the kept tokens keep their order and move up, the tail is PAD. `keys` holds one
    PRNG key per row (see `document_id_keys`).
    """
    droppable = (token_ids >= 0) & (token_ids < byte_tokenizer.BYTE_VALUES)

    def one(key, ids, can_drop):
        noise = jnp.where(can_drop, jax.random.uniform(key, ids.shape), 2.0)
        rank = jnp.argsort(jnp.argsort(noise))
        dropped = rank < _drop_count(can_drop.sum(), rate)
        order = jnp.argsort(dropped, stable=True)  # kept tokens first, in their order
        kept = (~dropped).sum()
        moved = ids[order]
        return jnp.where(jnp.arange(ids.shape[0]) < kept, moved, byte_tokenizer.PAD_ID)

    return jax.vmap(one)(keys, token_ids, droppable)


@functools.partial(jax.jit, static_argnames=("num_patches", "rate"))
def patch_keep_masks(keys: jax.Array, num_patches: int, rate: float) -> jax.Array:
    """bool [batch, num_patches]: exactly num_patches - floor(rate x num_patches) patches kept."""
    dropped = int(np.floor(num_patches * rate))

    def one(key):
        rank = jnp.argsort(jnp.argsort(jax.random.uniform(key, (num_patches,))))
        return rank >= dropped

    return jax.vmap(one)(keys)
