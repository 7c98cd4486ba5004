"""k retrieved documents for every document of a split, computed offline in batches.

Data preparation calls `neighbours_for_split` once; training then reads bank rows / document ids and
never queries the index online. Per batch of queries: search the top `num_candidates` candidates in
the index, apply the rules (`rules.select_neighbours`: never itself, relevance, prefer multimodal,
diversity). Training queries (`training=True`) are embedded with query dropout (20% of caption bytes
and of image patches dropped, keyed by the document's row, so reruns give the same neighbours).

    python -m cm3leon_jax.retrieval.neighbours --config experiments/retrieval_shapes.py --workdir W

writes `<index_dir>/neighbours_<split>.npz` (see `NeighbourTable.save`) for each split of
`config.retrieval.neighbour_splits` and a summary (on `shapes` also how often a neighbour shows an
object of its query, against chance). The memory bank is the train split; a train document is
never its own neighbour, and validation/test documents retrieve train documents.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Optional

from absl import logging
from etils import epath
import ml_collections
import numpy as np

from cm3leon_jax import cli, config, results
from cm3leon_jax.progress import Progress
from cm3leon_jax.retrieval import corpus, encoder, index, rules

STAGE = "retrieval_neighbours"


@dataclasses.dataclass
class NeighbourTable:
    """Neighbours of the documents of one split.

    document_ids: the query documents, in split order.
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


def neighbours_for_split(data: config.DataConfig, retrieval: config.RetrievalConfig,
                         workdir: str, split: str = "train", training: Optional[bool] = None,
                         biencoder: Optional[encoder.BiEncoder] = None,
                         bank: Optional[index.RetrievalIndex] = None) -> NeighbourTable:
    """Neighbours of every document of `split` from the index built by `build_index`.

    training: apply query dropout (default: only for the train split).
    biencoder / bank: already loaded ones; by default both are loaded from the workdir (the index
      is refused if it was built by another encoder).
    """
    training = split == "train" if training is None else training
    biencoder = biencoder or encoder.load_trained(encoder.encoder_dir(retrieval, workdir))
    bank = bank or index.RetrievalIndex.load(index.index_dir(retrieval, workdir),
                                             encoder_fingerprint=biencoder.fingerprint,
                                             search_batch_size=retrieval.search_batch_size)
    if bank.manifest["encoder"]["fingerprint"] != biencoder.fingerprint:
        raise index.IndexMismatch("the given index was built by another encoder than the given "
                                  "one; " + index.REBUILD_HINT)
    dropout = retrieval.query_dropout if training else 0.0
    queries = corpus.embed_split(biencoder, data, workdir, split, retrieval.embed_batch_size,
                                 query_dropout=dropout, dropout_seed=retrieval.query_dropout_seed,
                                 what=f"embedding {split} queries")
    query_rows = np.asarray([bank.row_of(doc_id) for doc_id in queries.document_ids], np.int32)
    selection = rules.Rules.from_config(retrieval)
    progress = Progress(f"neighbours of {split} documents", total=len(queries), unit="documents")
    neighbours = compute_neighbours(bank, queries.embeddings, selection, query_rows,
                                    retrieval.num_candidates, retrieval.search_batch_size, progress)
    info = {"split": split, "query_dropout": dropout, "query_dropout_seed":
            retrieval.query_dropout_seed, "rules": dataclasses.asdict(selection),
            "num_candidates": retrieval.num_candidates, "encoder": bank.manifest["encoder"],
            "corpus_fingerprint": bank.manifest["corpus"]["fingerprint"],
            "index_kind": bank.params.kind}
    return NeighbourTable(queries.document_ids, neighbours, bank.document_ids, info)


def table_path(retrieval: config.RetrievalConfig, workdir: str, split: str) -> epath.Path:
    return index.index_dir(retrieval, workdir) / f"neighbours_{split}.npz"


def summary_figures(table: NeighbourTable, k: int) -> dict:
    found = (table.neighbours >= 0).sum(axis=1)
    bank_row = {doc_id: row for row, doc_id in enumerate(table.bank_document_ids)}
    query_rows = np.asarray([bank_row.get(doc_id, -1) for doc_id in table.document_ids])
    return {"documents": len(table.document_ids), "k": k,
            "with_k_neighbours": float(np.mean(found == k)),
            "mean_neighbours": float(found.mean()),
            "self_retrieved": int(((table.neighbours == query_rows[:, None])
                                   & (query_rows[:, None] >= 0)).sum())}


def shapes_relevance(table: NeighbourTable, data: config.DataConfig, workdir: str,
                     split: str) -> dict[str, float]:
    """On `shapes`: how often a neighbour shows an object (shape and colour) of its query, next to
    how often a random train document does (the chance level)."""
    from cm3leon_jax.data import sources  # noqa: PLC0415 - only for the shapes figure
    from cm3leon_jax.data.shapes import scenes  # noqa: PLC0415

    objects = {}
    for source_split in {"train", split}:
        for example in sources.numpy_examples(data, workdir, source_split):
            parsed = scenes.parse_caption(example["caption"]) or []
            objects[example["id"]] = {(shape, colour) for shape, colour, _, _ in parsed}
    rng = np.random.default_rng(0)
    shared, chance = [], []
    for row, doc_id in enumerate(table.document_ids):
        for neighbour_id in table.neighbour_ids(row):
            shared.append(bool(objects[doc_id] & objects[neighbour_id]))
        random_id = table.bank_document_ids[rng.integers(len(table.bank_document_ids))]
        chance.append(bool(objects[doc_id] & objects[random_id]))
    return {"neighbour_shares_an_object": float(np.mean(shared)) if shared else 0.0,
            "random_document_shares_an_object": float(np.mean(chance))}


def main(cfg: ml_collections.ConfigDict, workdir: str) -> None:
    """Neighbour tables for every split of `config.retrieval.neighbour_splits`."""
    data = config.data_config(cfg)
    retrieval = config.retrieval_config(cfg)
    biencoder = encoder.load_trained(encoder.encoder_dir(retrieval, workdir))
    bank = index.RetrievalIndex.load(index.index_dir(retrieval, workdir),
                                     encoder_fingerprint=biencoder.fingerprint,
                                     search_batch_size=retrieval.search_batch_size)
    figures = {}
    for split in retrieval.neighbour_splits:
        table = neighbours_for_split(data, retrieval, workdir, split, biencoder=biencoder,
                                     bank=bank)
        path = table.save(table_path(retrieval, workdir, split))
        figures[split] = summary_figures(table, retrieval.k)
        if data.source == "shapes":
            figures[split].update(shapes_relevance(table, data, workdir, split))
        line = f"neighbours of {split}: {figures[split]} -> {path}"
        logging.info("%s", line)
        print(line)
    results.write_metrics(workdir, STAGE, figures)


if __name__ == "__main__":
    cli.run(main, default_config="retrieval_shapes.py")
