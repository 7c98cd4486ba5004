"""tf.data input pipelines: prepared shards -> packed rows -> global `jax.Array` batches.

    shards of this host (by file, or by example index)
      -> epoch e: files in a seeded order, records interleaved, shuffled in a seeded buffer
      -> position = index of the record in this host's stream (counts on across epochs)
      -> batches of records -> one `tf.numpy_function` per batch builds every example:
           pretraining: [retrieved docs] <break> query <eos> (layout.py), image-first drawn per
                        example, then CM3 masking (cm3.py)
           SFT:         prompt <break> output <eos>, task drawn per record (sft_tasks.py)
      -> pack into seq_len rows (packing.py) -> per-host batches -> prefetch
      -> `Batches`: global arrays (`jax.make_array_from_process_local_data`) for the train loop

Determinism. Every random choice is a function of (seed, epoch) or (seed, host, position): file
order (`stateless_shuffle` seeded by (seed, epoch)), the shuffle buffer (seeded from (seed, epoch,
host)), and per example one numpy Generator seeded by (seed, host, position) that draws the layout
order, the CM3 spans or the SFT task. So a run sees the same rows on every machine, an epoch is
reshuffled differently from the last, and a record met again in a later epoch is masked afresh.
Changing the seed, the number of hosts, the batch size, the shards or the config changes the
stream (the resume state records them and refuses a mismatch).

Host sharding. With the files dividing evenly among hosts (`len(files) % process_count == 0`) each
host reads `files[index::count]`: no host reads bytes it drops. Otherwise (few large shards, or a
host count that does not divide them) every host reads all files in the same seeded order and
keeps the records whose index in that order is `index (mod count)`: still disjoint with union =
the split, balanced to one record, at the price of reading everything on every host. `shard_by`
forces either way.

Building examples in batches. `tf.numpy_function` costs more per call than laying out and masking a
4,096-token example (docs/BENCHMARKS.md, CM3 masking), so records go through it `RECORD_BATCH` at
a time, and one call does the layout and the masking of all of them: it calls the same numpy
functions `layout_example_tf` and `cm3_mask_batch_tf` wrap (`layout.render_document` /
`join_documents`, `cm3.cm3_mask`), with the same results for the same inputs and seeds.

Fitting an example into a row. CM3 masking adds two sentinels per span (at most 2 * max_spans
tokens), and a document cut by the packer would lose its moved spans. So, when documents may not
be split across rows, an example is built to at most `seq_len - 2 * max_spans` tokens *before*
masking: retrieved documents are left out, least relevant (last) first, until it fits, and only a
query that is too long alone is truncated or dropped (`config.cm3.overlong`). Retrieved documents
are context; the query is what the example is about.

Resuming exactly (`Batches.get_state` / `set_state`). The state is the number of batches consumed
plus what determines the stream (seed, split, batch size, hosts, ...). `set_state` rebuilds the
pipeline and skips that many batches' worth of rows inside tf.data (no device transfer). That is
exact by construction (the stream is a pure function of the state), needs no files beside the
checkpoint, and the same JSON state serves every host. The cost: a resumed run recomputes the rows
it skips, at the pipeline's own speed (`benchmarks/pipeline.py` measures it: rows/s and tokens/s),
i.e. resume time = rows consumed per host / pipeline rows/s. tf.data's iterator checkpointing would
avoid that but writes the shuffle buffer and the packer's open rows per host into files that the
checkpoint retention would have to manage.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, Iterator, Optional, Sequence

from etils import epath
import numpy as np

from cm3leon_jax.config import CM3Config, SFTConfig
from cm3leon_jax.data.input import cm3 as cm3_lib
from cm3leon_jax.data.input import layout, packing, sft_tasks
from cm3leon_jax.data.offline import shards
from cm3leon_jax.data.input.cm3 import SpecialIds

RECORD_BATCH = 32  # records per tf.numpy_function call
SHUFFLE_BUFFER = 1024  # records in the shuffle buffer (each a few KB of ids)
SHARD_BY = ("auto", "file", "example")
PRETRAIN_FIELDS = ("text", "image", "retrieved_text", "retrieved_text_lengths", "retrieved_image",
                   "retrieved_image_lengths")
SFT_FIELDS = ("text", "image", "qa_question", "qa_question_lengths", "qa_answer",
              "qa_answer_lengths", "edit_instruction", "edit_image")
ROW_FEATURES = packing.ROW_FEATURES


# --------------------------------------------------------------------------------------------------
# Prepared data (`paths.Workdir.prepared`): its manifest, fingerprint, which part this host reads
# --------------------------------------------------------------------------------------------------

def read_manifest(prepared: str | epath.Path) -> dict:
    """The manifest; a clear FileNotFoundError (saying to run prepare) when there is none."""
    return shards.read_manifest(prepared)


def data_fingerprint(prepared: str | epath.Path) -> str:
    """The prepared data's fingerprint (one hash over every shard's checksum), which training
    records in its checkpoints so that a resume on changed data is refused."""
    return read_manifest(prepared)["fingerprint"]


def special_ids(vocab) -> SpecialIds:
    """The `SpecialIds` of a `cm3leon_jax.vocab.Vocabulary`."""
    return SpecialIds(pad=vocab.pad_id, eos=vocab.eos_id, break_=vocab.break_id, boi=vocab.boi_id,
                      eoi=vocab.eoi_id, sentinels=tuple(int(s) for s in vocab.sentinel_ids),
                      mask=vocab.mask_id)


@dataclasses.dataclass(frozen=True)
class HostShard:
    """What one host reads: `files`, then the records whose index (in the seeded order of those
    files) is `example_index` mod `example_count` (count 1 = every record of its files)."""

    files: tuple[str, ...]
    example_index: int
    example_count: int
    documents: int  # records this host gets per epoch

    @property
    def by(self) -> str:
        return "example" if self.example_count > 1 else "file"


def process_position(process_index: Optional[int], process_count: Optional[int]) -> tuple[int, int]:
    """(index, count) of this host; defaults: `jax.process_index()`, `jax.process_count()`."""
    if process_index is None or process_count is None:
        import jax  # noqa: PLC0415 - tools that pass both never import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must be in [0, {process_count})")
    return int(process_index), int(process_count)


def host_shard(prepared: str | epath.Path, split: str, process_index: int, process_count: int,
               shard_by: str = "auto") -> HostShard:
    """This host's part of `split` (see the module docstring); errors when a host would get no
    records (it would wait forever for data while the others train)."""
    if shard_by not in SHARD_BY:
        raise ValueError(f"shard_by={shard_by!r}: must be one of {', '.join(SHARD_BY)}")
    files = shards.shard_files(prepared, split)
    counts = [int(s["documents"]) for s in read_manifest(prepared)["splits"][split]["shards"]]
    if not files or not sum(counts):
        raise ValueError(f"split {split!r} of {prepared} holds no documents: nothing to train on "
                         "(check the licence policy and removals in the data card)")
    by_file = (shard_by == "file" or (shard_by == "auto" and len(files) % process_count == 0))
    if by_file:
        if len(files) < process_count:
            raise ValueError(f"shard_by='file' with {len(files)} shard files for {process_count} "
                             "hosts: some hosts would get none; use shard_by='example' or "
                             "prepare more shards (config.prepare.num_shards)")
        documents = sum(counts[process_index::process_count])
        shard = HostShard(tuple(files[process_index::process_count]), 0, 1, documents)
    else:
        total = sum(counts)
        documents = total // process_count + (process_index < total % process_count)
        shard = HostShard(tuple(files), process_index, process_count, documents)
    if shard.documents == 0:
        raise ValueError(f"host {process_index} of {process_count} would get no documents of "
                         f"split {split!r} ({sum(counts)} documents in {len(files)} files)")
    return shard


# --------------------------------------------------------------------------------------------------
# Records: the seeded, host-sharded, epoch-by-epoch stream of serialized records
# --------------------------------------------------------------------------------------------------

def _mix(seed: Any, *words: Any) -> Any:
    """A well-spread int64 from (seed, words...): a stateless Philox draw, not arithmetic, so that
    (seed, epoch) pairs never collide the way `seed * k + epoch` does."""
    import tensorflow as tf  # noqa: PLC0415

    key = tf.stack([tf.cast(seed, tf.int64)] + [tf.cast(w, tf.int64) for w in words])
    while key.shape[0] > 2:  # Fold extra words in, two at a time.
        key = tf.concat([tf.random.stateless_uniform([1], key[:2], minval=None, maxval=None,
                                                     dtype=tf.int64), key[2:]], 0)
    return tf.random.stateless_uniform([], key, minval=None, maxval=None, dtype=tf.int64)


def record_dataset(shard: HostShard, *, seed: int, process_index: int, repeat: bool,
                   shuffle: bool, shuffle_buffer: int = SHUFFLE_BUFFER) -> Any:
    """(position int64, serialized record) of this host, epoch after epoch (or one epoch).

    Epoch e reads the host's files in the order `stateless_shuffle(files, (seed, e))` (the same on
    every host, which example sharding needs), interleaved record by record, keeps its records
    (example sharding) and shuffles them in a buffer seeded by (seed, e, host).
    """
    import tensorflow as tf  # noqa: PLC0415

    files = tf.constant(list(shard.files))
    seed_t = tf.constant(seed, tf.int64)

    def epoch(index):
        ordered = (tf.random.experimental.stateless_shuffle(
            files, seed=tf.stack([seed_t, index])) if shuffle else files)
        records = tf.data.Dataset.from_tensor_slices(ordered).interleave(
            tf.data.TFRecordDataset, cycle_length=min(len(shard.files), 8), block_length=1,
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if shard.example_count > 1:
            count, keep = shard.example_count, shard.example_index
            records = records.enumerate().filter(lambda i, _: i % count == keep).map(
                lambda _, record: record)
        if shuffle:
            records = records.shuffle(shuffle_buffer, seed=_mix(seed_t, index, process_index),
                                      reshuffle_each_iteration=False)
        return records

    epochs = tf.data.Dataset.counter() if repeat else tf.data.Dataset.range(1)
    return epochs.flat_map(epoch).enumerate()


def _unpack_fields(fields: Sequence[str], arrays: Sequence[np.ndarray]) -> dict[str, list]:
    """numpy (values, row_splits) pairs -> field -> list of per-record arrays."""
    out = {}
    for index, name in enumerate(fields):
        values, splits = arrays[2 * index], arrays[2 * index + 1]
        out[name] = [values[a:b] for a, b in zip(splits[:-1], splits[1:])]
    return out


def _build_batches(records: Any, fields: Sequence[str], build: Callable[[int, dict], Any],
                   with_task: bool) -> Any:
    """Applies `build(position, record fields) -> None | (ids, weights[, task])` to every record,
    `RECORD_BATCH` records per `tf.numpy_function` call; yields the non-empty examples."""
    import tensorflow as tf  # noqa: PLC0415

    spec = {name: tf.io.VarLenFeature(tf.int64) for name in fields}

    def numpy_batch(positions, *arrays):
        per_record = _unpack_fields(fields, arrays)
        ids, weights, tasks = [], [], []
        for row, position in enumerate(positions.tolist()):
            built = build(position, {name: per_record[name][row] for name in fields})
            if built is None or not len(built[0]):
                continue
            ids.append(built[0])
            weights.append(built[1])
            tasks.append(built[2] if with_task else -1)
        splits = np.cumsum([0] + [len(x) for x in ids], dtype=np.int64)
        if not ids:
            return (np.zeros(0, np.int32), np.zeros(0, np.float32), splits,
                    np.zeros(0, np.int32))
        return (np.concatenate(ids).astype(np.int32), np.concatenate(weights).astype(np.float32),
                splits, np.asarray(tasks, np.int32))

    def tf_batch(positions, serialized):
        parsed = tf.io.parse_example(serialized, spec)
        arrays = []
        for name in fields:
            ragged = tf.RaggedTensor.from_sparse(parsed[name])
            arrays += [tf.cast(ragged.values, tf.int32), ragged.row_splits]
        values, weights, splits, tasks = tf.numpy_function(
            numpy_batch, [positions, *arrays], [tf.int32, tf.float32, tf.int64, tf.int32],
            stateful=False, name="build_examples")
        for tensor in (values, weights, splits, tasks):
            tensor.set_shape([None])
        return (tf.RaggedTensor.from_row_splits(values, splits, validate=False),
                tf.RaggedTensor.from_row_splits(weights, splits, validate=False), tasks)

    return records.batch(RECORD_BATCH).map(
        tf_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch()


PREFLIGHT_RECORDS = 64


def preflight(shard: HostShard, build: Callable[[int, dict], Any], why: str) -> None:
    """Raises ValueError when none of the host's first `PREFLIGHT_RECORDS` records gives an
    example. An endless stream in which no record survives would otherwise never yield a batch,
    and training would wait forever instead of failing; `why` says what usually causes it."""
    import tensorflow as tf  # noqa: PLC0415

    checked = 0
    records = tf.data.TFRecordDataset(list(shard.files)).take(PREFLIGHT_RECORDS)
    for serialized in records.as_numpy_iterator():
        checked += 1
        # Negative positions: seeds no example of the stream uses.
        built = build(-checked, shards.parse_numpy(serialized))
        if built is not None and len(built[0]):
            return
    raise ValueError(f"none of the first {checked} records of {shard.files[0]} gives a training "
                     f"example, so the stream would never yield a batch: {why}")


# --------------------------------------------------------------------------------------------------
# Pretraining examples
# --------------------------------------------------------------------------------------------------

def fit_limit(cm3: CM3Config) -> Optional[int]:
    """Longest example (before masking) that still fits a row with all its spans; None when
    documents may continue into the next row (nothing to fit)."""
    if cm3.allow_split_documents:
        return None
    limit = cm3.seq_len - 2 * cm3.max_spans
    if limit < 2:
        raise ValueError(f"config.cm3.seq_len={cm3.seq_len} leaves no room for a document once "
                         f"2 * max_spans={2 * cm3.max_spans} tokens are kept for CM3 sentinels")
    return limit


def pretrain_example(record: dict, special: SpecialIds, cm3: CM3Config,
                     rng: np.random.Generator, with_retrieval: bool = True
                     ) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """One record -> CM3-masked (ids, weights), or None (empty query, or dropped as overlong).

    `record` holds int arrays `text`, `image` (bare or `<boi>`-wrapped codes) and the ragged
    `retrieved_*` fields. `rng` first draws the layout order (`layout.draw_image_first`, one draw
    for all documents of the example), then the CM3 spans.
    """
    image_first = layout.draw_image_first(rng, cm3.image_first_probability)
    query = layout.Document(text=record["text"],
                            image=sft_tasks.strip_image_markers(record["image"], special))
    rendered_query = layout.render_document(query, special, image_first)
    if not rendered_query.size:
        return None
    rendered = []
    if with_retrieval:
        texts = shards.unragged(record["retrieved_text"], record["retrieved_text_lengths"])
        images = shards.unragged(record["retrieved_image"], record["retrieved_image_lengths"])
        if len(texts) != len(images):
            raise ValueError(f"record has {len(texts)} retrieved texts but {len(images)} images")
        for text, image in zip(texts, images):
            document = layout.Document(text=text,
                                       image=sft_tasks.strip_image_markers(image, special))
            piece = layout.render_document(document, special, image_first)
            if piece.size:
                rendered.append(piece)
    limit = fit_limit(cm3)
    if limit is not None:
        # Each kept document costs its tokens plus one <break> or the final <eos>.
        while rendered and sum(len(p) + 1 for p in rendered) + len(rendered_query) + 1 > limit:
            rendered.pop()  # The least relevant retrieved document goes first.
    ids = layout.join_documents(rendered + [rendered_query], special)
    if limit is not None and len(ids) > limit:
        if cm3.overlong == "drop":
            return None
        ids = ids[:limit]
    return cm3_lib.cm3_mask(ids, special, cm3, rng)


def _example_rng(seed: int, process_index: int, position: int) -> np.random.Generator:
    return cm3_lib.rng_from_seed([seed, process_index, position])


# --------------------------------------------------------------------------------------------------
# Rows and batches
# --------------------------------------------------------------------------------------------------

def _pack(documents: Any, cm3: CM3Config, pad_id: int) -> Any:
    return packing.pack_dataset(documents, cm3.seq_len, pack=cm3.pack,
                                allow_split_documents=cm3.allow_split_documents,
                                overlong=cm3.overlong, max_open_rows=cm3.max_open_rows,
                                pad_id=pad_id)


def _pad_values(pad_id: int) -> dict[str, Any]:
    return {"ids": pad_id, "segment_ids": 0, "positions": 0, "weights": 0.0, "task_ids": -1}


def _batch(rows: Any, *, batch_size: int, seq_len: int, pad_id: int, repeat: bool,
           skip_batches: int, num_batches: Optional[int]) -> Any:
    """Rows -> `[batch_size, seq_len]` batches. One pass: the last batch is completed with padding
    rows (weights 0), and with `num_batches` the stream is cut or padded to exactly that many (so
    every host of a multi-host eval yields the same number)."""
    import tensorflow as tf  # noqa: PLC0415

    if skip_batches:
        rows = rows.skip(skip_batches * batch_size)
    batches = rows.batch(batch_size, drop_remainder=repeat)
    if repeat:
        return batches.prefetch(tf.data.AUTOTUNE)
    pads = _pad_values(pad_id)

    def complete(batch):
        missing = batch_size - tf.shape(batch["ids"])[0]
        out = {}
        for name, value in batch.items():
            value = tf.pad(value, [[0, missing], [0, 0]],
                           constant_values=tf.cast(pads[name], value.dtype))
            value.set_shape([batch_size, seq_len])
            out[name] = value
        return out

    batches = batches.map(complete)
    if num_batches is not None:
        if skip_batches > num_batches:
            raise ValueError(f"skip_batches={skip_batches} exceeds num_batches={num_batches}")
        empty = {name: tf.fill([batch_size, seq_len], tf.cast(pads[name], spec.dtype))
                 for name, spec in batches.element_spec.items()}
        batches = batches.concatenate(tf.data.Dataset.from_tensors(empty).repeat()).take(
            num_batches - skip_batches)
    return batches.prefetch(tf.data.AUTOTUNE)


def _check_common(batch_size: int, repeat: bool, num_batches: Optional[int],
                  process_count: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be >= 1 (rows per host)")
    if not repeat and process_count > 1 and num_batches is None:
        raise ValueError("a one-pass (eval) stream over several hosts needs num_batches: hosts "
                         "hold different numbers of rows, and every host must yield as many "
                         "batches as the others or the collective steps would hang")
    if num_batches is not None and (repeat or num_batches < 1):
        raise ValueError("num_batches applies to one-pass streams (repeat=False) and must be >= 1")


def pretrain_dataset(prepared: str | epath.Path, split: str, special: SpecialIds,
                     cm3: CM3Config, *, batch_size: int, seed: int = 0, repeat: bool = True,
                     shuffle: Optional[bool] = None, with_retrieval: bool = True,
                     shuffle_buffer: int = SHUFFLE_BUFFER, process_index: Optional[int] = None,
                     process_count: Optional[int] = None, shard_by: str = "auto",
                     skip_batches: int = 0, num_batches: Optional[int] = None) -> Any:
    """Pretraining batches of this host: dicts of `ids`, `segment_ids`, `positions` (int32) and
    `weights` (float32), each `[batch_size, cm3.seq_len]`; `batch_size` is rows *per host*.

    repeat: True = training (endless, epoch by epoch reshuffled, full batches only); False = one
      pass over the split (eval), the last batch completed with padding rows of weight 0.
    shuffle: defaults to `repeat` (eval reads in file order; its masks are still seeded, so eval
      losses are comparable between evaluations).
    with_retrieval: False drops the retrieved documents (the "without retrieval" ablation/eval).
    process_index / process_count: this host (default: jax's); see `host_shard` for shard_by.
    skip_batches: batches to skip (resume); num_batches: one pass cut/padded to that many batches.
    """
    process_index, process_count = process_position(process_index, process_count)
    _check_common(batch_size, repeat, num_batches, process_count)
    shuffle = repeat if shuffle is None else shuffle
    fit_limit(cm3)  # Fails early on a seq_len too short for the sentinels.
    shard = host_shard(prepared, split, process_index, process_count, shard_by)
    records = record_dataset(shard, seed=seed, process_index=process_index, repeat=repeat,
                             shuffle=shuffle, shuffle_buffer=shuffle_buffer)

    def build(position: int, record: dict):
        rng = _example_rng(seed, process_index, position)
        return pretrain_example(record, special, cm3, rng, with_retrieval)

    if repeat:
        preflight(shard, build, f"every query is longer than seq_len - 2 * max_spans = "
                  f"{fit_limit(cm3)} tokens and config.cm3.overlong='drop' (or the queries are "
                  "empty); raise config.cm3.seq_len or use overlong='truncate'")
    examples = _build_batches(records, PRETRAIN_FIELDS, build, with_task=False)
    documents = examples.map(lambda ids, weights, _: (ids, weights))
    rows = _pack(documents, cm3, special.pad)
    return _batch(rows, batch_size=batch_size, seq_len=cm3.seq_len, pad_id=special.pad,
                  repeat=repeat, skip_batches=skip_batches, num_batches=num_batches)


# --------------------------------------------------------------------------------------------------
# Instruction tuning
# --------------------------------------------------------------------------------------------------

def _load_vocab(vocab):
    if isinstance(vocab, (str, epath.Path)):
        from cm3leon_jax.vocab import Vocabulary  # noqa: PLC0415 - only for a path argument

        return Vocabulary.load(vocab)
    return vocab


def sft_record(record: dict, special: SpecialIds) -> sft_tasks.Record:
    """The SFT fields of a parsed record (ragged question/answer pairs split, images bare)."""
    return sft_tasks.Record(
        text=np.asarray(record["text"], np.int32),
        image=sft_tasks.strip_image_markers(record["image"], special),
        questions=shards.unragged(record["qa_question"], record["qa_question_lengths"]),
        answers=shards.unragged(record["qa_answer"], record["qa_answer_lengths"]),
        edit_instruction=np.asarray(record["edit_instruction"], np.int32),
        edit_image=sft_tasks.strip_image_markers(record["edit_image"], special))


def sft_dataset(prepared: str | epath.Path, split: str, vocab, cm3: CM3Config, sft: SFTConfig,
                *, batch_size: int, seed: int = 0, repeat: bool = True,
                shuffle: Optional[bool] = None, tasks: Optional[Sequence[str]] = None,
                shuffle_buffer: int = SHUFFLE_BUFFER, process_index: Optional[int] = None,
                process_count: Optional[int] = None, shard_by: str = "auto",
                skip_batches: int = 0, num_batches: Optional[int] = None) -> Any:
    """Instruction-tuning batches of this host: the pretraining features (weights 1 on answers,
    0 on prompts and padding) plus `task_ids` (int32 `[batch_size, seq_len]`: the task index in
    `sft_tasks.TASKS` of each token's example, -1 on padding) for per-task losses.

    vocab: a `Vocabulary` or its directory (templates are encoded with its text tokenizer).
    tasks: restrict the mixture to these tasks (per-task eval sets: `tasks=("vqa",)`).
    Packing uses `cm3.seq_len`, `cm3.pack`, ... (no CM3 masking: SFT is plain next-token loss on
    the answers). An example longer than seq_len is left out whatever `cm3.overlong` says when
    documents may not be split: truncating it would cut the answer, the only part with a loss.
    Other arguments as `pretrain_dataset`.
    """
    import tensorflow as tf  # noqa: PLC0415

    vocab = _load_vocab(vocab)
    special = special_ids(vocab)
    process_index, process_count = process_position(process_index, process_count)
    _check_common(batch_size, repeat, num_batches, process_count)
    shuffle = repeat if shuffle is None else shuffle
    weights = sft_tasks.mixture_weights(sft, tasks)
    templates = sft_tasks.Templates.from_vocab(sft, vocab, special)
    shard = host_shard(prepared, split, process_index, process_count, shard_by)
    records = record_dataset(shard, seed=seed, process_index=process_index, repeat=repeat,
                             shuffle=shuffle, shuffle_buffer=shuffle_buffer)

    def build(position: int, record: dict):
        rng = _example_rng(seed, process_index, position)
        drawn = templates.draw(sft_record(record, special), rng, weights)
        if drawn is None:
            return None
        task, ids, loss_weights = drawn
        if not cm3.allow_split_documents and len(ids) > cm3.seq_len:
            return None  # A cut answer (an image without its end, no <eos>) teaches harm.
        return ids, loss_weights, task

    # The packer carries ids and weights only; the task rides in the ids as
    # id + (task + 1) * offset (exact integer arithmetic, int32 has room for 2**31 / vocab_size
    # tasks) and is split off again after packing, where padding (segment 0) gets task -1.
    if repeat:
        preflight(shard, build, "no record supports the tasks with weight > 0 "
                  f"({', '.join(t for t, w in zip(sft_tasks.TASKS, weights) if w > 0)}: e.g. VQA "
                  "needs question/answer pairs, editing an edit pair), or every example is "
                  f"longer than config.cm3.seq_len={cm3.seq_len}")
    offset = int(vocab.vocab_size)
    examples = _build_batches(records, SFT_FIELDS, build, with_task=True)
    documents = examples.map(lambda ids, w, task: (ids + (task + 1) * offset, w))
    rows = _pack(documents, cm3, special.pad)

    def split_task(row):
        token = row["segment_ids"] > 0
        row = dict(row)
        row["task_ids"] = tf.where(token, row["ids"] // offset - 1, -1)
        row["ids"] = tf.where(token, row["ids"] % offset, special.pad)
        return row

    rows = rows.map(split_task)
    return _batch(rows, batch_size=batch_size, seq_len=cm3.seq_len, pad_id=special.pad,
                  repeat=repeat, skip_batches=skip_batches, num_batches=num_batches)


# --------------------------------------------------------------------------------------------------
# Global batches for the training loop
# --------------------------------------------------------------------------------------------------

class ResumableBatches:
    """Global batches for `cm3leon_jax.train.loop` (its `DataIterator` protocol), resumable.

    A subclass makes this host's numpy batches (`next_local`, counting `consumed`); `__next__`
    turns the host's `[global_batch / hosts, seq_len]` arrays into global `jax.Array`s laid out by
    `sharding` (`jax.make_array_from_process_local_data`; no sharding: the numpy batch as is).
    `get_state()` is JSON: the batches consumed plus `signature` (what determines the stream);
    `set_state` refuses a checkpoint whose signature differs, naming each difference, then calls
    `_restart()` so the stream continues after that many batches. Shared by the pretraining/SFT
    stream (`Batches`) and the upsampler's (`superres/pairs.PairBatches`).
    """

    stream_name = "the data stream of this run"

    def __init__(self, *, sharding: Any, global_batch_size: int, seq_len: int, signature: dict):
        self.sharding = sharding
        self.global_batch_size = int(global_batch_size)
        self.seq_len = int(seq_len)
        self.signature = json.loads(json.dumps(signature))  # Exactly what JSON will give back.
        self.consumed = 0

    def __iter__(self) -> "ResumableBatches":
        return self

    def next_local(self) -> dict[str, np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _restart(self) -> None:
        """Called after `set_state` changed `consumed`; a stream holding an iterator drops it."""

    def __next__(self) -> dict:
        import jax  # noqa: PLC0415

        local = self.next_local()
        if self.sharding is None:
            return local
        shape = (self.global_batch_size, self.seq_len)
        return {name: jax.make_array_from_process_local_data(self.sharding, value, shape)
                for name, value in local.items()}

    def get_state(self) -> dict:
        return {"batches": self.consumed, **self.signature}

    def set_state(self, state: dict) -> None:
        differences = [f"{key}: saved {state.get(key)!r}, now {value!r}"
                       for key, value in self.signature.items() if state.get(key) != value]
        if differences:
            raise ValueError(f"{self.stream_name} differs from the checkpoint's ("
                             + "; ".join(differences) + "), so resuming would not see the "
                             "batches the interrupted run would have seen; use the same "
                             "settings or start a new --workdir")
        self.consumed = int(state["batches"])
        self._restart()


class Batches(ResumableBatches):
    """The pretraining / SFT stream: `build(skip_batches)` makes this host's tf.data stream
    skipping that many batches (rebuilt lazily after `set_state`; cost: see the module
    docstring). A one-pass stream ends with StopIteration.
    """

    def __init__(self, build: Callable[[int], Any], *, sharding: Any, global_batch_size: int,
                 seq_len: int, signature: dict):
        super().__init__(sharding=sharding, global_batch_size=global_batch_size, seq_len=seq_len,
                         signature=signature)
        self._build = build
        self._iterator: Optional[Iterator[dict]] = None

    def next_local(self) -> dict[str, np.ndarray]:
        """This host's next batch as numpy arrays (counts as consumed)."""
        if self._iterator is None:
            self._iterator = self._build(self.consumed).as_numpy_iterator()
        batch = next(self._iterator)
        self.consumed += 1
        return batch

    def _restart(self) -> None:
        self._iterator = None  # Rebuilt lazily, skipping `consumed` batches.


def _local_batch_size(global_batch_size: int, process_count: int) -> int:
    if global_batch_size % process_count:
        raise ValueError(f"global batch {global_batch_size} does not split evenly over "
                         f"{process_count} hosts")
    return global_batch_size // process_count


def pretrain_batches(prepared: str | epath.Path, split: str, special: SpecialIds,
                     cm3: CM3Config, *, global_batch_size: int, sharding: Any, seed: int = 0,
                     repeat: bool = True, with_retrieval: bool = True,
                     shuffle_buffer: int = SHUFFLE_BUFFER, num_batches: Optional[int] = None,
                     process_index: Optional[int] = None, process_count: Optional[int] = None,
                     shard_by: str = "auto") -> Batches:
    """`Batches` over `pretrain_dataset` (what `pretrain.py` trains and evaluates on)."""
    process_index, process_count = process_position(process_index, process_count)
    local = _local_batch_size(global_batch_size, process_count)

    def build(skip: int):
        return pretrain_dataset(prepared, split, special, cm3, batch_size=local, seed=seed,
                                repeat=repeat, with_retrieval=with_retrieval,
                                shuffle_buffer=shuffle_buffer, process_index=process_index,
                                process_count=process_count, shard_by=shard_by,
                                skip_batches=skip, num_batches=num_batches)

    signature = {"kind": "pretrain", "split": split, "seed": seed, "repeat": repeat,
                 "global_batch_size": global_batch_size, "process_count": process_count,
                 "with_retrieval": with_retrieval, "shuffle_buffer": shuffle_buffer,
                 "shard_by": shard_by, "cm3": dataclasses.asdict(cm3)}
    return Batches(build, sharding=sharding, global_batch_size=global_batch_size,
                   seq_len=cm3.seq_len, signature=signature)


def sft_batches(prepared: str | epath.Path, split: str, vocab, cm3: CM3Config, sft: SFTConfig,
                *, global_batch_size: int, sharding: Any, seed: int = 0, repeat: bool = True,
                tasks: Optional[Sequence[str]] = None, shuffle_buffer: int = SHUFFLE_BUFFER,
                num_batches: Optional[int] = None, process_index: Optional[int] = None,
                process_count: Optional[int] = None, shard_by: str = "auto") -> Batches:
    """`Batches` over `sft_dataset` (what `sft.py` trains and evaluates on)."""
    vocab = _load_vocab(vocab)
    process_index, process_count = process_position(process_index, process_count)
    local = _local_batch_size(global_batch_size, process_count)

    def build(skip: int):
        return sft_dataset(prepared, split, vocab, cm3, sft, batch_size=local, seed=seed,
                           repeat=repeat, tasks=tasks, shuffle_buffer=shuffle_buffer,
                           process_index=process_index, process_count=process_count,
                           shard_by=shard_by, skip_batches=skip, num_batches=num_batches)

    signature = {"kind": "sft", "split": split, "seed": seed, "repeat": repeat,
                 "global_batch_size": global_batch_size, "process_count": process_count,
                 "tasks": list(tasks) if tasks is not None else None,
                 "shuffle_buffer": shuffle_buffer, "shard_by": shard_by,
                 "cm3": dataclasses.asdict(cm3), "sft": dataclasses.asdict(sft)}
    return Batches(build, sharding=sharding, global_batch_size=global_batch_size,
                   seq_len=cm3.seq_len, signature=signature)


def eval_sets(make: Callable[[], Batches]) -> Callable[[], Iterator[dict]]:
    """An eval-set factory for `Task.eval_data` (the loop calls it at every evaluation and reads
    the fresh stream from its start): `eval_sets(lambda: pretrain_batches(..., repeat=False))`."""
    return lambda: iter(make())

