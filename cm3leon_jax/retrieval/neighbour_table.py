"""The neighbour tables: k retrieved documents per document of a split, as the offline lookup
(`retrieval/neighbours.py`) writes them and data preparation reads them; and
`compute_neighbours`, the search + rules both the lookup and online retrieval use.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Optional

from etils import epath
import numpy as np

from cm3leon_jax import config, paths
from cm3leon_jax.progress import Progress
from cm3leon_jax.retrieval import index, rules


@dataclasses.dataclass
class NeighbourTable:
    """Neighbours of the documents of one split.

    document_ids: the query documents, sorted by id (the Beam lookup's order, whatever the
      workers).
    neighbours: int32 [N, k] rows of the memory bank (`bank_document_ids[row]`), -1 where fewer
      than k candidates passed the rules.
    bank_document_ids: the index's documents (row order).
    info: provenance (encoder and corpus fingerprints, rules, split, query dropout).
    """

    document_ids: list[str]
    neighbours: np.ndarray
    bank_document_ids: list[str]
    info: dict

    def neighbour_ids(self, row: int) -> list[str]:
        """Document ids of row `row`'s neighbours (missing ones left out)."""
        return [self.bank_document_ids[r] for r in self.neighbours[row] if r >= 0]

    def as_dict(self) -> dict[str, list[str]]:
        return {doc_id: self.neighbour_ids(row) for row, doc_id in enumerate(self.document_ids)}

    def save(self, path: str | epath.Path) -> epath.Path:
        """One .npz: `neighbours`, `document_ids`, `bank_document_ids` and `info` (JSON)."""
        path = epath.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            np.savez(f, neighbours=self.neighbours.astype(np.int32),
                     document_ids=np.asarray(self.document_ids, dtype=np.str_),
                     bank_document_ids=np.asarray(self.bank_document_ids, dtype=np.str_),
                     info=np.asarray(json.dumps(self.info, sort_keys=True)))
        return path

    @classmethod
    def load(cls, path: str | epath.Path) -> "NeighbourTable":
        with epath.Path(path).open("rb") as f:
            stored = np.load(f)
            return cls(document_ids=stored["document_ids"].tolist(),
                       neighbours=stored["neighbours"],
                       bank_document_ids=stored["bank_document_ids"].tolist(),
                       info=json.loads(str(stored["info"])))


def compute_neighbours(bank: index.RetrievalIndex, query_embeddings: np.ndarray,
                       selection: rules.Rules, query_rows: Optional[np.ndarray] = None,
                       num_candidates: Optional[int] = None, batch_size: int = 1024,
                       progress: Optional[Progress] = None) -> np.ndarray:
    """int32 [N, k] bank rows chosen by the rules for each query (-1 = fewer than k).

    query_embeddings: float32 [N, D] unit vectors (embedded with dropout for training queries).
    query_rows: int [N] each query's own row in the bank (-1 when not in it); it is never chosen.
    num_candidates: index candidates per query before the rules (default: the index's own).
    """
    query_embeddings = np.asarray(query_embeddings, np.float32)
    count = len(query_embeddings)
    if query_rows is None:
        query_rows = np.full((count,), -1, np.int32)
    if len(query_rows) != count:
        raise ValueError(f"{len(query_rows)} query rows for {count} query embeddings")
    num_candidates = num_candidates or bank.params.num_neighbours
    result = np.full((count, selection.k), -1, np.int32)
    for start in range(0, count, batch_size):
        stop = min(start + batch_size, count)
        candidate_rows, _ = bank.search(query_embeddings[start:stop], num_candidates)
        safe_rows = np.maximum(candidate_rows, 0)
        result[start:stop] = rules.select_neighbours(
            query_embeddings[start:stop], candidate_rows, bank.embeddings[safe_rows],
            bank.multimodal[safe_rows] & (candidate_rows >= 0), selection,
            query_rows[start:stop])
        if progress is not None:
            progress.update(stop - start)
    return result


def table_path(retrieval: config.RetrievalConfig, workdir: str, split: str) -> epath.Path:
    return paths.Workdir(workdir).neighbour_table(split, retrieval.index_dir)
