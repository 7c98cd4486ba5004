"""Offline data preparation as one Apache Beam pipeline: documents -> token shards + card.

    python -m cm3leon_jax.data.prepare --config experiments/pretrain_tiny.py --workdir W \\
        [--remove ids.txt] [--config.prepare.beam_options='("--direct_num_workers=2",
        "--direct_running_mode=multi_processing")']

Stages (each a Beam transform, so the same code runs on the DirectRunner here and on Dataflow,
Flink or Spark by pipeline options; see docs/DATA.md):

    read (project builders: one tfrecord file per worker, decoded by tf.data in batches; tfds
    data sets: tfds.beam.ReadFromTFDS) -> progress line (done, rate, ETA per worker)
    -> licence policy + removal list (excluded, counted by reason)
    -> tokenize text and VQ-encode images in batches (models loaded once per worker, DoFn.setup)
    -> resolve each document's retrieved neighbours to their tokens (a CoGroupByKey join against
       the train split's kept documents: the memory bank obeys the same policy, so a refused or
       removed document is never anyone's neighbour)
    -> group by shard (hash of the document id) -> write shard + checksummed sidecar.

Then the main process writes `prepared/manifest.json` (every shard with its sha256, and the data
fingerprint training records) and the data card (`data_card.json`, `DATA_CARD.md`).

Re-running is cheap and safe: a split whose shards are all finished (sidecar present, checksum
matching) and unaffected by new removals is not read at all; otherwise only its missing, corrupt or
affected shards are rewritten (encoding is redone for the split, writing is not). Shard bytes do
not depend on the number of workers (records are sorted by id inside a shard).

Neighbour tables come from the retrieval stage (`python -m cm3leon_jax.retrieval.neighbours`, a
Beam pipeline too, with the same `beam_options`); with
`prepare.retrieval=auto` a split without one is prepared without retrieved documents.
"""

from __future__ import annotations

import collections
import json
import os
import threading
import time
import uuid
from typing import Optional

from absl import flags, logging
import apache_beam as beam
from etils import epath
import ml_collections
import numpy as np

from cm3leon_jax import cli, compilation_cache, config, console, paths, results
from cm3leon_jax.data.offline import beam as beam_io, provenance, shards
from cm3leon_jax.data.sources import catalog

STAGE = "prepare"
_REMOVE = flags.DEFINE_string("remove", None, "File of document ids or source URIs to remove "
                              "(one per line); affected shards are rebuilt, the rest kept.")


# One vocabulary and VQ-GAN per worker process, shared by every split's stage and thread: each
# ImageTokenizer jit-compiles its encoder (~1.5 s on a 2-core CPU), so three splits compiled three
# times before.
_MODELS: dict[tuple, tuple] = {}  # (vocab path, batch size, vocab.json stat) -> models
_MODELS_LOCK = threading.Lock()


def _models(vocab_path: str, batch_size: int) -> tuple:
    from cm3leon_jax.vocab import Vocabulary  # noqa: PLC0415 - heavy import, once per worker

    stat = os.stat(os.path.join(vocab_path, "vocab.json")) if os.path.isdir(vocab_path) else None
    key = (vocab_path, batch_size, stat and (stat.st_mtime_ns, stat.st_size))  # a rewritten vocab
    with _MODELS_LOCK:
        if key not in _MODELS:
            vocab = Vocabulary.load(vocab_path)
            _MODELS.clear()
            _MODELS[key] = (vocab, vocab.image_tokenizer(batch_size))
        return _MODELS[key]


class EncodeDocuments(beam.DoFn):
    """Text -> sentencepiece ids, images -> VQ-GAN code ids, in batches; one model per worker."""

    def __init__(self, vocab_path: str, batch_size: int):
        self.vocab_path, self.batch_size = vocab_path, batch_size
        self.encoded = beam.metrics.Metrics.counter(STAGE, "documents_encoded")

    def setup(self):
        compilation_cache.enable()  # a new worker process loads the encoder instead of compiling
        self.vocab, self.images = _models(self.vocab_path, self.batch_size)

    def _image_ids(self, images: list[np.ndarray]) -> list[list[int]]:
        """Code ids (offset into the unified vocabulary), row-major, without <boi>/<eoi>: the
        training layout wraps images itself."""
        codes = self.images.encode(np.stack(images))
        return [(c.reshape(-1).astype(np.int64) + self.vocab.image_offset).tolist() for c in codes]

    def process(self, batch: list[dict]):
        image_ids = self._image_ids([d["image"] for d in batch])
        edited = [d for d in batch if "edit_image" in d]
        edit_ids = dict(zip((d["id"] for d in edited),
                            self._image_ids([d["edit_image"] for d in edited]))) if edited else {}
        for document, image in zip(batch, image_ids):
            record = {key: document[key] for key in ("id", "source", "license", "attribution")}
            record["text"] = self.vocab.encode_text(document["caption"])
            record["image"] = image
            if "questions" in document:
                record["qa_question"], record["qa_question_lengths"] = shards.ragged(
                    [self.vocab.encode_text(q) for q in document["questions"]])
                record["qa_answer"], record["qa_answer_lengths"] = shards.ragged(
                    [self.vocab.encode_text(a) for a in document["answers"]])
            if document["id"] in edit_ids:
                record["edit_instruction"] = self.vocab.encode_text(document["edit_instruction"])
                record["edit_image"] = edit_ids[document["id"]]
            yield record
        self.encoded.inc(len(batch))


def attach_retrieved(element) -> dict:
    """(id, {"record": [record], "retrieved": [(rank, id, text, image), ...]}) -> record."""
    _, grouped = element
    (record,) = grouped["record"]
    retrieved = sorted(grouped["retrieved"])
    record = dict(record)
    record["retrieved_ids"] = [doc_id for _, doc_id, _, _ in retrieved]
    record["retrieved_text"], record["retrieved_text_lengths"] = shards.ragged(
        [text for _, _, text, _ in retrieved])
    record["retrieved_image"], record["retrieved_image_lengths"] = shards.ragged(
        [image for _, _, _, image in retrieved])
    return record


def resolve_requests(element):
    """(neighbour id, {"document": [(text, image)], "wanted_by": [(query, rank)]}) ->
    (query, (rank, neighbour id, text, image)) for every query that wants an existing document."""
    neighbour_id, grouped = element
    if not grouped["document"]:
        return  # refused, removed or absent: never attached
    text, image = grouped["document"][0]
    for query_id, rank in grouped["wanted_by"]:
        yield query_id, (rank, neighbour_id, text, image)


class WriteShard(beam.DoFn):
    def __init__(self, directory: str, num_shards: int):
        self.directory, self.num_shards = directory, num_shards

    def process(self, element):
        index, records = element
        records = sorted(records, key=lambda r: r["id"])
        counts = provenance.SplitCounts()
        for record in records:
            counts.keep(record, token_count(record))
        path = epath.Path(self.directory) / shards.shard_name(index, self.num_shards)
        info = shards.write_shard(path, (shards.serialize(r) for r in records), {
            "documents": counts.documents, "tokens": counts.tokens,
            "document_ids": [r["id"] for r in records], "by_source": dict(counts.by_source),
            "by_license": dict(counts.by_license),
            "tokens_by_license": dict(counts.tokens_by_license)})
        yield info.name


def token_count(record: dict) -> int:
    return sum(len(record.get(k, ())) for k in ("text", "image", "retrieved_text",
                                                 "retrieved_image"))


class WriteJson(beam.DoFn):
    def __init__(self, path: str):
        self.path = path

    def process(self, value):
        epath.Path(self.path).write_text(json.dumps(value, sort_keys=True))
        yield self.path


# --------------------------------------------------------------------------------------------------
# Planning: what must be (re)built
# --------------------------------------------------------------------------------------------------

def neighbour_tables(cfg: ml_collections.ConfigDict, prepare: config.PrepareConfig, workdir: str
                     ) -> dict[str, dict[str, list[str]]]:
    """split -> {document id: neighbour ids} from the retrieval stage's tables."""
    if prepare.retrieval == "off":
        return {}
    if "retrieval" not in cfg:
        if prepare.retrieval == "required":
            raise config.ConfigError("config.prepare.retrieval='required' but the config has no "
                                     "`retrieval` section")
        return {}
    from cm3leon_jax.retrieval import neighbour_table  # noqa: PLC0415 - only when retrieval is on

    retrieval = config.retrieval_config(cfg)
    tables = {}
    for split in prepare.splits:
        path = neighbour_table.table_path(retrieval, workdir, split)
        if path.exists():
            tables[split] = neighbour_table.NeighbourTable.load(path).as_dict()
        elif prepare.retrieval == "required":
            raise FileNotFoundError(f"no neighbour table for {split} at {path}: run "
                                    "`python -m cm3leon_jax.retrieval.neighbours` first")
        else:
            logging.warning("no neighbour table for %s (%s): preparing it without retrieved "
                            "documents", split, path)
    return tables


def filter_retrieval_index(cfg: ml_collections.ConfigDict, prepare: config.PrepareConfig,
                           workdir: str, policy: provenance.Policy) -> dict[str, int]:
    """Drops from the retrieval index (if there is one) every document the policy now refuses, so
    a removed document can no longer be retrieved at generation time either. Returns the rows
    dropped by reason; the neighbour tables need no change: the join never attaches a refused
    neighbour, and shards holding one are rebuilt (`shards_to_build`)."""
    if prepare.retrieval == "off" or "retrieval" not in cfg:
        return {}
    from cm3leon_jax.retrieval import index  # noqa: PLC0415 - only when retrieval is on

    retrieval = config.retrieval_config(cfg)
    directory = index.index_dir(retrieval, workdir)
    if not (directory / index.MANIFEST).exists():
        return {}
    bank = index.RetrievalIndex.load(directory)
    kept, excluded = bank.filtered(policy.verdict, policy.describe(),
                                   lambda size: index.parameters_for(retrieval, size))
    if kept is not bank:
        kept.save(directory)
        console.say(f"[prepare] retrieval index: dropped {sum(excluded.values())} of {len(bank)} "
                    f"documents ({dict(excluded)}), {len(kept)} remain; rebuilt {directory}")
    return dict(excluded)


def shards_to_build(directory: epath.Path, num_shards: int, removed: frozenset[str],
                    neighbours: dict[str, list[str]]) -> list[int]:
    """Shards that are missing, corrupt, or hold a removed document or one that retrieved it."""
    todo = []
    for index in range(num_shards):
        info = shards.read_info(directory / shards.shard_name(index, num_shards))
        if info is None:
            todo.append(index)
            continue
        affected = any(doc_id in removed or removed.intersection(neighbours.get(doc_id, ()))
                       for doc_id in info.document_ids)
        if affected:
            todo.append(index)
    return todo


def load_removals(out: epath.Path, remove_file: Optional[str]) -> tuple[frozenset[str], list[dict]]:
    """All removals so far (persisted in prepared/removed.json) plus the new list."""
    recorded, log = provenance.recorded_removals(out)
    ids = set(recorded)
    if remove_file:
        new = provenance.read_removals(remove_file) - ids
        ids |= new
        log.append({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "list": str(remove_file), "count": len(new)})
    return frozenset(ids), log


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------

def check_image_size(data: config.DataConfig, vocab_path: epath.Path) -> None:
    """ConfigError unless the vocabulary's VQ-GAN reads images of `data.image_size` (preparing new
    data for a trained model keeps its tokenizers, so the data must come at their size)."""
    from cm3leon_jax.tokenizers import image_tokenizer  # noqa: PLC0415
    from cm3leon_jax.vocab import Vocabulary  # noqa: PLC0415

    path = Vocabulary.load(vocab_path).image_tokenizer_path
    tokenizer_config = epath.Path(path) / image_tokenizer.CONFIG_FILE
    if not path or not tokenizer_config.exists():
        return
    size = json.loads(tokenizer_config.read_text())["image_size"]
    if size != data.image_size:
        raise config.ConfigError(
            f"config.data.image_size={data.image_size}: the vocabulary's VQ-GAN ({path}) reads "
            f"{size}x{size} images; set --config.data.image_size={size} (a trained model keeps "
            "its tokenizers) or train new tokenizers")


def prepare(cfg: ml_collections.ConfigDict, workdir: str, remove_file: Optional[str] = None
            ) -> dict:
    data = config.data_config(cfg)
    prep = config.prepare_config(cfg)
    out = paths.Workdir(workdir).prepared
    vocab_path = paths.Workdir(workdir).vocab(prep.vocab_dir)
    if not (vocab_path / "vocab.json").exists():
        raise FileNotFoundError(f"no vocabulary at {vocab_path}: train the tokenizers first "
                                "(python -m cm3leon_jax.tokenizers.train_vqgan and the text "
                                "tokenizer), or set config.prepare.vocab_dir")
    check_image_size(data, vocab_path)
    start = time.perf_counter()
    removed, removal_log = load_removals(out, remove_file)
    policy = provenance.Policy.from_config(data, removed)
    tables = neighbour_tables(cfg, prep, workdir)
    todo = {split: shards_to_build(shards.split_dir(out, split), prep.num_shards, removed,
                                   tables.get(split, {}))
            for split in prep.splits}
    for split in prep.splits:
        shards.split_dir(out, split).mkdir(parents=True, exist_ok=True)
    building = {split: shard_list for split, shard_list in todo.items() if shard_list}
    index_excluded = filter_retrieval_index(cfg, prep, workdir, policy)
    if removal_log and remove_file:
        removal_log[-1]["index_rows_removed"] = sum(index_excluded.values())
    if building:
        if removal_log and remove_file:
            removal_log[-1]["rebuilt"] = {s: [shards.shard_name(i, prep.num_shards) for i in v]
                                          for s, v in building.items()}
        run_pipeline(data, prep, workdir, policy, tables, building, str(vocab_path))
    else:
        console.say("[prepare] every shard is finished and unaffected: nothing to rebuild")
    manifest = write_manifest(out, prep, policy, str(vocab_path))
    card = write_data_card(workdir, data, prep, policy, manifest, str(vocab_path), removal_log)
    (out / provenance.REMOVALS_FILE).write_text(
        json.dumps({"ids": sorted(removed), "log": removal_log}, indent=1))
    seconds = time.perf_counter() - start
    figures = summary(card, building, prep, seconds)
    results.write_metrics(workdir, STAGE, figures)
    return figures


def run_pipeline(data: config.DataConfig, prep: config.PrepareConfig, workdir: str,
                 policy: provenance.Policy, tables: dict, building: dict[str, list[int]],
                 vocab_path: str) -> None:
    out = paths.Workdir(workdir).prepared
    # The train split is the memory bank whenever any split being built has neighbours.
    need_bank = any(split in tables for split in building)
    read_splits = sorted(set(building) | ({"train"} if need_bank else set()))
    options = beam_io.pipeline_options(prep.beam_options)
    workers, run_id = beam_io.expected_workers(options), uuid.uuid4().hex
    logging.info("prepare: building %s with Beam options %s",
                 {s: len(v) for s, v in building.items()}, list(prep.beam_options) or "(default)")
    with beam.Pipeline(options=options) as pipeline:
        encoded = {}
        for split in read_splits:
            total = _split_total(data, workdir, split)
            kept, excluded = (
                beam_io.read_documents(pipeline, data, workdir, split, workers)
                | f"Progress {split}" >> beam.ParDo(beam_io.ReportProgress(
                    f"prepare: {split} documents", total, workers, run_id))
                | f"Policy {split}" >> beam.ParDo(beam_io.ApplyPolicy(policy)).with_outputs(
                    beam_io.ApplyPolicy.EXCLUDED, main="kept"))
            if split in building:
                _ = (excluded
                     | f"Count excluded {split}" >> beam.combiners.Count.PerElement()
                     | f"Excluded dict {split}" >> beam.combiners.ToDict()
                     | f"Write excluded {split}" >> beam.ParDo(WriteJson(
                         str(shards.split_dir(out, split) / "excluded.json"))))
            encoded[split] = (
                kept
                | f"Batch {split}" >> beam.BatchElements(min_batch_size=prep.encode_batch_size,
                                                         max_batch_size=prep.encode_batch_size)
                | f"Encode {split}" >> beam.ParDo(EncodeDocuments(vocab_path,
                                                                  prep.encode_batch_size)))
        bank = None
        if need_bank:
            bank = encoded["train"] | "Bank" >> beam.Map(
                lambda r: (r["id"], (list(r["text"]), list(r["image"]))))
        for split, shard_list in building.items():
            records = encoded[split]
            if split in tables:
                table = tables[split]
                requests = records | f"Want {split}" >> beam.FlatMap(
                    lambda r, t=table: [(n, (r["id"], rank)) for rank, n in
                                        enumerate(t.get(r["id"], ()))])
                resolved = ({"document": bank, "wanted_by": requests}
                            | f"Join neighbours {split}" >> beam.CoGroupByKey()
                            | f"Resolve {split}" >> beam.FlatMap(resolve_requests))
                records = ({"record": records | f"Key {split}" >> beam.Map(lambda r: (r["id"], r)),
                            "retrieved": resolved}
                           | f"Join records {split}" >> beam.CoGroupByKey()
                           | f"Attach {split}" >> beam.Map(attach_retrieved))
            wanted = frozenset(shard_list)
            _ = (records
                 | f"Shard key {split}" >> beam.Map(
                     lambda r: (shards.shard_of(r["id"], prep.num_shards), r))
                 | f"Only unfinished {split}" >> beam.Filter(lambda kv, w=wanted: kv[0] in w)
                 | f"Group {split}" >> beam.GroupByKey()
                 | f"Write {split}" >> beam.ParDo(WriteShard(str(shards.split_dir(out, split)),
                                                             prep.num_shards)))


def _split_total(data: config.DataConfig, workdir: str, split: str) -> Optional[int]:
    return catalog.known_split_size(data, workdir, split)


def write_manifest(out: epath.Path, prep: config.PrepareConfig, policy: provenance.Policy,
                   vocab_path: str) -> dict:
    splits, checksums = {}, {}
    for split in prep.splits:
        directory = shards.split_dir(out, split)
        infos = []
        for index in range(prep.num_shards):
            name = shards.shard_name(index, prep.num_shards)
            info = shards.read_info(directory / name)
            if info is None:
                if (directory / name).exists() or shards.sidecar_path(directory / name).exists():
                    raise RuntimeError(f"{directory / name} is corrupt after preparation; re-run")
                continue  # no document hashed to this shard
            infos.append(info)
            checksums[f"{split}/{name}"] = info.sha256
        splits[split] = {"shards": [{"name": i.name, "sha256": i.sha256, "documents": i.documents,
                                     "tokens": i.tokens} for i in infos],
                         "documents": sum(i.documents for i in infos),
                         "tokens": sum(i.tokens for i in infos)}
    manifest = {"splits": splits, "fingerprint": provenance.fingerprint(checksums),
                "vocab": vocab_path, "policy": policy.describe(), "num_shards": prep.num_shards}
    (out / shards.MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def write_data_card(workdir: str, data: config.DataConfig, prep: config.PrepareConfig,
                    policy: provenance.Policy, manifest: dict, vocab_path: str,
                    removal_log: list[dict]) -> dict:
    out = paths.Workdir(workdir).prepared
    counts = {}
    for split in prep.splits:
        split_counts = provenance.SplitCounts()
        directory = shards.split_dir(out, split)
        for entry in manifest["splits"][split]["shards"]:
            info = shards.read_info(directory / entry["name"])
            split_counts.documents += info.documents
            split_counts.tokens += info.tokens
            split_counts.by_source.update(info.by_source)
            split_counts.by_license.update(info.by_license)
            split_counts.tokens_by_license.update(info.tokens_by_license)
        excluded = directory / "excluded.json"
        if excluded.exists():
            split_counts.excluded.update(json.loads(excluded.read_text()))
        if data.source == "folder":
            skipped = catalog.prepared_builder(data, workdir).info.metadata.get(
                "skipped_by_reason", {})
            if split == "train":  # bad files are counted once, at build time, for the folder
                split_counts.excluded.update({f"bad file: {k}": v for k, v in skipped.items()})
        counts[split] = split_counts
    data_set = catalog.name(data, workdir)
    return provenance.write_card(workdir, data_set=data_set, policy=policy, splits=counts,
                                 tokenizers={"vocabulary": vocab_path},
                                 shards_fingerprint=manifest["fingerprint"],
                                 removals_log=removal_log)


def summary(card: dict, building: dict, prep: config.PrepareConfig, seconds: float) -> dict:
    kept = {s: c["documents"] for s, c in card["splits"].items()}
    excluded = collections.Counter()
    for split in card["splits"].values():
        excluded.update(split["excluded"])
    built = sum(len(v) for v in building.values())
    total = prep.num_shards * len(prep.splits)
    documents = sum(kept.values())
    console.say(f"[prepare] kept {kept}; excluded {dict(excluded) or 'none'}; shards rebuilt "
                f"{built}/{total} (skipped {total - built} finished); {documents} documents in "
                f"{seconds:.0f} s ({documents / max(seconds, 1e-9):.1f} documents/s); "
                f"fingerprint {card['shards_fingerprint'][:12]}")
    return {"kept": kept, "excluded": dict(excluded), "shards_rebuilt": built,
            "shards_total": total, "seconds": seconds,
            "fingerprint": card["shards_fingerprint"]}


def main(cfg: ml_collections.ConfigDict, workdir: str) -> None:
    prepare(cfg, workdir, _REMOVE.value)


if __name__ == "__main__":
    cli.run(main, default_config="demo.py")
