"""k retrieved documents for every document of a split, looked up offline by a Beam pipeline.

Data preparation joins the tables this writes; training then reads bank rows / document ids and
never queries the index online. The lookup is one Beam pipeline for every split (DirectRunner by
default; the same `config.prepare.beam_options` as `prepare` pick workers or another runner):

    read the split's documents (`data/offline/beam.read_documents`) -> data policy (licences,
    removals: a refused document is skipped, counted by reason) -> batches of `retrieval.embed_batch_size`
    -> `LookUpNeighbours`: the bi-encoder and the index are loaded once per worker process
       (`setup`, the index checked against the encoder's and the corpus's fingerprints); a batch
       is embedded (training queries with query dropout) and `compute_neighbours` searches the
       top `num_candidates` and applies the rules (`rules.select_neighbours`: never itself,
       relevance, prefer multimodal, diversity)
    -> all (document id, neighbour rows) of the split -> `NeighbourTable` (sorted by id) at
       `table_path`.

Training queries (the train split) are embedded with query dropout (20% of caption bytes and of
image patches dropped), keyed by a hash of the document's id, so the tables do not depend on
batching, bundles or the number of workers (every batch is padded to one shape, too).

    python -m cm3leon_jax.retrieval.neighbours --config experiments/retrieval_shapes.py \
        --workdir W [--config.prepare.beam_options='("--direct_num_workers=2",
        "--direct_running_mode=multi_processing")']

writes `<index_dir>/neighbours_<split>.npz` (see `NeighbourTable.save`) for each split of
`config.retrieval.neighbour_splits`, prints progress lines (documents done, rate, ETA per worker)
and a summary per split (documents looked up, skipped by reason, share with k neighbours; on
`shapes` also how often a neighbour shows an object of its query, against chance). The memory bank
is the train split; a train document is never its own neighbour, and validation/test documents
retrieve train documents.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import uuid

from absl import logging
import apache_beam as beam
from etils import epath
import ml_collections
import numpy as np

from cm3leon_jax import cli, compilation_cache, config, console, results
from cm3leon_jax.data.sources import catalog
from cm3leon_jax.retrieval import corpus, encoder, index, neighbour_table, rules

STAGE = "retrieval_neighbours"


# Models loaded by this worker process, shared by every split's stage and thread:
# (encoder dir, index dir, encoder fingerprint, corpus fingerprint) -> (BiEncoder, RetrievalIndex).
_LOADED: dict[tuple, tuple] = {}
_LOAD_LOCK = threading.Lock()
# The encoder `run_pipeline` loaded to check the index (reused by an in-process DirectRunner).
_PLANNED_WITH: dict[str, encoder.BiEncoder] = {}


def _load_models(retrieval: config.RetrievalConfig, workdir: str, encoder_fingerprint: str,
                 corpus_fingerprint: str) -> tuple[encoder.BiEncoder, index.RetrievalIndex]:
    key = (str(encoder.encoder_dir(retrieval, workdir)), str(index.index_dir(retrieval, workdir)),
           encoder_fingerprint, corpus_fingerprint)
    with _LOAD_LOCK:
        if key not in _LOADED:
            biencoder = _PLANNED_WITH.get(key[0]) or encoder.load_trained(key[0])
            if biencoder.fingerprint != encoder_fingerprint:
                raise index.IndexMismatch(
                    f"the encoder in {key[0]} changed while neighbours were being looked up "
                    f"(fingerprint {biencoder.fingerprint[:12]}…, expected "
                    f"{encoder_fingerprint[:12]}…); " + index.REBUILD_HINT)
            corpus.check_byte_encoder(biencoder)
            bank = index.RetrievalIndex.load(index.index_dir(retrieval, workdir),
                                             encoder_fingerprint=biencoder.fingerprint,
                                             corpus_fingerprint_expected=corpus_fingerprint,
                                             search_batch_size=retrieval.search_batch_size)
            _LOADED.clear()  # one model set per process: a new run replaces the last one's
            _LOADED[key] = (biencoder, bank)
        return _LOADED[key]


def _pad(values, count: int):
    """`values` (a list or an array with a leading batch axis) padded to `count` rows by repeating
    its first row (padding rows are computed and thrown away: every call has one shape)."""
    missing = count - len(values)
    if missing <= 0:
        return values
    if isinstance(values, list):
        return values + [values[0]] * missing
    return np.concatenate([values, np.repeat(values[:1], missing, axis=0)])


class LookUpNeighbours(beam.DoFn):
    """Batches of documents -> (document id, int32 [k] bank rows) for each.

    setup: the bi-encoder and the index, once per worker process (checked against the
    fingerprints the pipeline was planned with). process: embed (query dropout keyed by document
    id when `query_dropout` > 0), search, apply the rules. Every embedding/search call has
    exactly `batch_size` rows, so a document's neighbours do not depend on how Beam batched it.
    """

    def __init__(self, retrieval: config.RetrievalConfig, workdir: str, split: str,
                 query_dropout: float, encoder_fingerprint: str, corpus_fingerprint: str):
        self.retrieval, self.workdir, self.split = retrieval, workdir, split
        self.query_dropout = query_dropout
        self.encoder_fingerprint, self.corpus_fingerprint = encoder_fingerprint, corpus_fingerprint
        self.looked_up = beam.metrics.Metrics.counter(STAGE, f"{split}_documents")

    def setup(self):
        compilation_cache.enable()
        self.biencoder, self.bank = _load_models(self.retrieval, self.workdir,
                                                 self.encoder_fingerprint, self.corpus_fingerprint)
        self.selection = rules.Rules.from_config(self.retrieval)

    def neighbours(self, documents: list[dict]) -> np.ndarray:
        size = self.retrieval.embed_batch_size
        batch = corpus.documents_batch(documents, self.biencoder.arch.text_max_length)
        padded = {key: _pad(value, size) for key, value in batch.items()}
        embeddings = corpus.embed_batch(self.biencoder, padded, self.query_dropout,
                                        self.retrieval.query_dropout_seed)
        query_rows = np.asarray([self.bank.row_of(doc_id) for doc_id in padded["id"]], np.int32)
        rows = neighbour_table.compute_neighbours(self.bank, embeddings, self.selection, query_rows,
                                  self.retrieval.num_candidates, batch_size=size)
        return rows[:len(documents)]

    def process(self, documents: list[dict]):
        size = self.retrieval.embed_batch_size
        for start in range(0, len(documents), size):
            chunk = documents[start:start + size]
            for document, rows in zip(chunk, self.neighbours(chunk)):
                yield document["id"], rows
            self.looked_up.inc(len(chunk))


class WriteTable(beam.DoFn):
    """All (document id, rows) of a split -> one `NeighbourTable` file (rows sorted by id); the
    documents skipped before the lookup come in as a side input and are recorded in its info."""

    def __init__(self, path: str, index_directory: str, info: dict, k: int):
        self.path, self.index_directory, self.info, self.k = path, index_directory, info, k

    def process(self, found: list, skipped: dict):
        found = sorted(found, key=lambda item: item[0])
        bank_ids = json.loads((epath.Path(self.index_directory) / index.DOCUMENT_IDS).read_text())
        if index.document_ids_fingerprint(bank_ids) != self.info["bank_document_ids_fingerprint"]:
            raise index.IndexMismatch(f"the index at {self.index_directory} changed while "
                                      "neighbours were being looked up; run again")
        rows = (np.stack([r for _, r in found]).astype(np.int32) if found
                else np.zeros((0, self.k), np.int32))
        info = dict(self.info, skipped=dict(sorted(skipped.items())))
        table = neighbour_table.NeighbourTable([doc_id for doc_id, _ in found], rows, bank_ids, info)
        yield str(table.save(self.path))


def run_pipeline(data: config.DataConfig, retrieval: config.RetrievalConfig,
                 beam_options, workdir: str, splits) -> dict[str, epath.Path]:
    """Looks up the neighbours of every document of `splits` in one Beam pipeline and writes one
    table per split (`table_path`). Returns split -> path."""
    from cm3leon_jax.data.offline import beam as beam_io, provenance  # noqa: PLC0415 - Beam

    directory = index.index_dir(retrieval, workdir)
    if not (directory / index.MANIFEST).exists():
        raise FileNotFoundError(f"no retrieval index at {directory}; " + index.REBUILD_HINT)
    manifest = json.loads((directory / index.MANIFEST).read_text())
    # Refused up front (not in every worker): the index must belong to the trained encoder.
    biencoder = encoder.load_trained(encoder.encoder_dir(retrieval, workdir))
    if manifest["encoder"]["fingerprint"] != biencoder.fingerprint:
        raise index.IndexMismatch(
            f"the index at {directory} was built by encoder {manifest['encoder']['model_id']!r} "
            f"(fingerprint {manifest['encoder']['fingerprint'][:12]}…), not by the one in "
            f"{encoder.encoder_dir(retrieval, workdir)} ({biencoder.fingerprint[:12]}…); "
            + index.REBUILD_HINT)
    corpus.check_byte_encoder(biencoder)
    with _LOAD_LOCK:
        _PLANNED_WITH.clear()
        _PLANNED_WITH[str(encoder.encoder_dir(retrieval, workdir))] = biencoder
    policy = provenance.Policy.of_workdir(data, workdir)
    selection = rules.Rules.from_config(retrieval)
    options = beam_io.pipeline_options(beam_options)
    workers = beam_io.expected_workers(options)
    run_id = uuid.uuid4().hex
    paths = {split: neighbour_table.table_path(retrieval, workdir, split) for split in splits}
    logging.info("neighbours: looking up %s with Beam options %s", list(splits),
                 list(beam_options) or "(default)")
    with beam.Pipeline(options=options) as pipeline:
        for split in splits:
            dropout = retrieval.query_dropout if split == "train" else 0.0
            info = {"split": split, "query_dropout": dropout,
                    "query_dropout_seed": retrieval.query_dropout_seed,
                    "query_dropout_key": "sha256(document id)",
                    "rules": dataclasses.asdict(selection),
                    "num_candidates": retrieval.num_candidates, "encoder": manifest["encoder"],
                    "corpus_fingerprint": manifest["corpus"]["fingerprint"],
                    "bank_document_ids_fingerprint": manifest["corpus"]["document_ids_fingerprint"],
                    "index_kind": manifest["kind"], "policy": policy.describe()}
            total = catalog.known_split_size(data, workdir, split)
            kept, skipped = (
                beam_io.read_documents(pipeline, data, workdir, split, workers)
                | f"Progress {split}" >> beam.ParDo(beam_io.ReportProgress(
                    f"neighbours of {split} documents", total, workers, run_id))
                | f"Policy {split}" >> beam.ParDo(beam_io.ApplyPolicy(policy)).with_outputs(
                    beam_io.ApplyPolicy.EXCLUDED, main="kept"))
            skipped_counts = (skipped
                              | f"Count skipped {split}" >> beam.combiners.Count.PerElement()
                              | f"Skipped dict {split}" >> beam.combiners.ToDict())
            _ = (kept
                 | f"Batch {split}" >> beam.BatchElements(
                     min_batch_size=retrieval.embed_batch_size,
                     max_batch_size=retrieval.embed_batch_size)
                 | f"Look up {split}" >> beam.ParDo(LookUpNeighbours(
                     retrieval, workdir, split, dropout, biencoder.fingerprint,
                     manifest["corpus"]["fingerprint"]))
                 | f"Collect {split}" >> beam.combiners.ToList()
                 | f"Write {split}" >> beam.ParDo(
                     WriteTable(str(paths[split]), str(directory), info, retrieval.k),
                     beam.pvalue.AsSingleton(skipped_counts)))
    return paths


def summary_figures(table: neighbour_table.NeighbourTable, k: int) -> dict:
    found = (table.neighbours >= 0).sum(axis=1)
    bank_row = {doc_id: row for row, doc_id in enumerate(table.bank_document_ids)}
    query_rows = np.asarray([bank_row.get(doc_id, -1) for doc_id in table.document_ids])
    return {"documents": len(table.document_ids), "k": k,
            "skipped": dict(table.info.get("skipped", {})),
            "with_k_neighbours": float(np.mean(found == k)),
            "mean_neighbours": float(found.mean()),
            "self_retrieved": int(((table.neighbours == query_rows[:, None])
                                   & (query_rows[:, None] >= 0)).sum())}


def shapes_relevance(table: neighbour_table.NeighbourTable, data: config.DataConfig, workdir: str,
                     split: str) -> dict[str, float]:
    """On `shapes`: how often a neighbour shows an object (shape and colour) of its query, next to
    how often a random train document does (the chance level)."""
    from cm3leon_jax.data.sources.shapes import scenes  # noqa: PLC0415

    objects = {}
    for source_split in {"train", split}:
        for example in catalog.numpy_examples(data, workdir, source_split):
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
    """Neighbour tables for every split of `config.retrieval.neighbour_splits`, then a summary."""
    data = config.data_config(cfg)
    retrieval = config.retrieval_config(cfg)
    beam_options = config.prepare_config(cfg).beam_options
    paths = run_pipeline(data, retrieval, beam_options, workdir, retrieval.neighbour_splits)
    figures = {}
    for split, path in paths.items():
        table = neighbour_table.NeighbourTable.load(path)
        figures[split] = summary_figures(table, retrieval.k)
        if data.source == "shapes":
            figures[split].update(shapes_relevance(table, data, workdir, split))
        line = (f"[neighbours] {split}: {figures[split]['documents']} documents looked up, "
                f"skipped {figures[split]['skipped'] or 'none'}; with {retrieval.k} neighbours "
                f"{figures[split]['with_k_neighbours']:.3f}, mean "
                f"{figures[split]['mean_neighbours']:.2f}; -> {path}")
        logging.info("%s", line)
        console.say(line)
        if figures[split]["mean_neighbours"] < retrieval.k / 2:
            mean = figures[split]["mean_neighbours"]
            warning = (f"[neighbours] warning: {split} documents got {mean:.2f} of {retrieval.k}"
                       f" neighbours on average: the rules skipped the rest among "
                       f"{retrieval.num_candidates} candidates (near-duplicates above "
                       f"{retrieval.relevance_threshold}, or too alike to each other above "
                       f"{retrieval.diversity_threshold}). An encoder near chance scores "
                       f"everything alike (see its recall); otherwise raise "
                       f"config.retrieval.num_candidates")
            logging.warning("%s", warning)
            console.say(warning)
    results.write_metrics(workdir, STAGE, figures)


if __name__ == "__main__":
    cli.run(main, default_config="retrieval_shapes.py")
