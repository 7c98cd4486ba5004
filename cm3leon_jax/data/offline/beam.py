"""The Beam pieces every offline job shares (`data/prepare.py`, `retrieval/neighbours.py`): runner
options, reading a split's documents from any source, the licence policy as a transform, and a
progress line per worker.
"""

from __future__ import annotations

import math
import os
import threading
from typing import Iterable, Optional, Sequence
import uuid

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions
import tensorflow_datasets as tfds

from cm3leon_jax import config
from cm3leon_jax.data.sources import catalog
from cm3leon_jax.data.offline import provenance
from cm3leon_jax.data.sources import images, webdataset
from cm3leon_jax.progress import Progress

# The local runner when the options name none. Beam's own default (DirectRunner, which switches
# between runners) first tries the Prism runner, which downloads a binary from GitHub at run time;
# nothing here may download anything, so the Fn API runner it falls back to is named directly.
LOCAL_RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"
_LOCAL_RUNNERS = (None, LOCAL_RUNNER, "DirectRunner", "SwitchingDirectRunner",
                  "BundleBasedDirectRunner")


def pipeline_options(beam_options: Sequence[str]) -> PipelineOptions:
    """`config.prepare.beam_options` as Beam pipeline options (`LOCAL_RUNNER` when none names a
    runner; `--direct_running_mode` / `--direct_num_workers` apply to it)."""
    options = list(beam_options)
    if not any(option.startswith("--runner") for option in options):
        options.append(f"--runner={LOCAL_RUNNER}")
    return PipelineOptions(options)


def expected_workers(options: PipelineOptions) -> int:
    """Worker processes a run will split the documents over: 1 for the DirectRunner in one process
    (in_memory, multi_threading: its threads share one count), `direct_num_workers` processes in
    multi_processing mode, 0 (unknown) for other runners."""
    runner = options.view_as(StandardOptions).runner
    if runner not in _LOCAL_RUNNERS:
        return 0
    direct = options.view_as(DirectOptions)
    if direct.direct_running_mode == "multi_processing":
        return max(1, direct.direct_num_workers or os.cpu_count() or 1)
    return 1


# (run id, what) -> Progress of this worker process; every thread and stage instance shares it.
_PROGRESS: dict[tuple[str, str], Progress] = {}
_PROGRESS_LOCK = threading.Lock()


class ReportProgress(beam.DoFn):
    """Pass-through that logs documents done, rate and ETA in this worker process (at most every
    `every_s` seconds, and when its share is done). The total is the split's size when the builder
    knows it, divided among `workers` processes (each sees about its share); with `workers` = 0
    (unknown) the line gives done and rate only."""

    def __init__(self, what: str, total: Optional[int], workers: int = 1,
                 run_id: Optional[str] = None, every_s: float = 5.0):
        self.what, self.total, self.workers, self.every_s = what, total, workers, every_s
        self.run_id = run_id or uuid.uuid4().hex

    def setup(self):
        share = math.ceil(self.total / self.workers) if self.total and self.workers else None
        what = self.what if self.workers == 1 else f"{self.what} (worker pid {os.getpid()})"
        with _PROGRESS_LOCK:
            self.progress = _PROGRESS.setdefault(
                (self.run_id, self.what), Progress(what, share, "documents", self.every_s))

    def process(self, element):
        with _PROGRESS_LOCK:
            self.progress.update(1)
        yield element


class ApplyPolicy(beam.DoFn):
    EXCLUDED = "excluded"

    def __init__(self, policy: provenance.Policy):
        self.policy = policy

    def process(self, document):
        if isinstance(document, tuple):  # ("bad file", reason) from a reader
            yield beam.pvalue.TaggedOutput(self.EXCLUDED, f"bad file: {document[1]}")
            return
        reason = self.policy.verdict(document)
        if reason is None:
            yield document
        else:
            yield beam.pvalue.TaggedOutput(self.EXCLUDED, reason)


def _shard_items(path: str, data: config.DataConfig, split: str):
    defaults = {"source": data.default_source, "license": data.default_license,
                "attribution": data.default_attribution}
    for item in webdataset.read_shard(path, data.image_size, split, data.validation_fraction,
                                      data.test_fraction, defaults):
        yield ("bad file", item.reason) if isinstance(item, images.BadImage) else item


# Features the later stages use (the rest, e.g. `objects`, is not even batched).
_DOCUMENT_FEATURES = ("id", "caption", "image", "source", "license", "attribution", "questions",
                      "edit")


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def documents_of_batch(batch: dict) -> Iterable[dict]:
    """A tf.data batch of a project builder's examples (numpy; `questions` ragged) -> one plain
    dict per document: id, caption, image, source, license, attribution, and questions/answers
    and the edit when the example has them."""
    questions = batch.get("questions")
    if questions is not None:
        asked = questions["question"].to_list()
        answered = questions["answer"].to_list()
    for row, doc_id in enumerate(batch["id"]):
        document = {"id": _text(doc_id), "caption": _text(batch["caption"][row]),
                    "image": batch["image"][row]}
        for key in ("source", "license", "attribution"):
            document[key] = _text(batch[key][row]) if key in batch else ""
        if questions is not None:
            document["questions"] = [_text(q) for q in asked[row]]
            document["answers"] = [_text(a) for a in answered[row]]
        if "edit" in batch:
            document["edit_instruction"] = _text(batch["edit"]["instruction"][row])
            document["edit_image"] = batch["edit"]["image"][row]
        yield document


def read_tfds_file(file_instruction, builder, batch_size: int = 256) -> Iterable[dict]:
    """The documents of one tfrecord file of a project builder's split, decoded by tf.data in
    batches: one tf.data element per document cost ~1.3 ms of Python each (about half of what
    VQ-encoding its two images costs), a batch of 256 ~0.25 ms per document."""
    from tensorflow_datasets.core import naming  # noqa: PLC0415

    name = naming.FilenameInfo.from_str(file_instruction.filename)
    dataset = builder.as_dataset(split=f"{name.split}[{name.shard_index}shard]")
    if file_instruction.skip > 0:
        dataset = dataset.skip(file_instruction.skip)
    if not file_instruction.takes_all:
        dataset = dataset.take(file_instruction.take)
    dataset = dataset.map(lambda e: {k: e[k] for k in _DOCUMENT_FEATURES if k in e})
    for batch in tfds.as_numpy(dataset.ragged_batch(batch_size).prefetch(1)):
        yield from documents_of_batch(batch)


def read_documents(pipeline, data: config.DataConfig, workdir: str, split: str, workers: int = 1):
    """The split's documents as a PCollection; bad samples as ("bad file", reason) tuples.

    Project builders are read one tfrecord file per worker, decoded by tf.data in batches
    (`read_tfds_file`); tfds data sets by tfds's Beam reader; WebDataset shards one tar per worker.
    With fewer files than `workers` (worker processes), the documents themselves are reshuffled
    after reading, so that encoding, the costly part, is spread over every worker.
    """
    if data.source in ("shapes", "folder"):
        builder = catalog.prepared_builder(data, workdir)
        if split not in builder.info.splits:  # a small folder can leave a split empty
            return pipeline | f"No {split} documents" >> beam.Create([])
        files = builder.info.splits[split].file_instructions
        documents = (pipeline
                     | f"Files {split}" >> beam.Create(files)
                     | f"Spread files {split}" >> beam.Reshuffle()
                     | f"Read {split}" >> beam.FlatMap(read_tfds_file, builder))
        if len(files) < workers:
            documents = documents | f"Spread documents {split}" >> beam.Reshuffle()
        return documents
    if data.source == "tfds":
        tfds_split = data.tfds_splits[catalog.SPLITS.index(split)]
        return (pipeline
                | f"Read {split}" >> tfds.beam.ReadFromTFDS(
                    catalog.builder(data, workdir), tfds_split,
                    read_config=tfds.ReadConfig(add_tfds_id=True))
                | f"Document {split}" >> beam.Map(
                    lambda example: catalog.tfds_document(data, tfds.as_numpy(example), 0, split)))
    paths = webdataset.shard_paths(data.webdataset)
    documents = (pipeline
                 | f"Shards {split}" >> beam.Create(paths)
                 | f"Read {split}" >> beam.FlatMap(_shard_items, data, split))
    if len(paths) < workers:
        documents = documents | f"Spread documents {split}" >> beam.Reshuffle()
    return documents
