"""The prepared token shards: record schema, file names, checksums, manifest.

`prepare` writes, for each split, `shard-00003-of-00008.tfrecord` files of serialized
`tf.train.Example`s (ids only, in the unified vocabulary: no pixels, no raw text) plus, per shard, a
sidecar `shard-00003-of-00008.json` (sha256 checksum, document ids, counts). A shard is *finished*
when its sidecar exists and the file's checksum matches it; a re-run skips finished shards and
rebuilds missing or corrupt ones. `manifest.json` lists every shard with its checksum; the manifest
fingerprint (`provenance.fingerprint`) is what training records in its checkpoints.

A record holds one query document and its retrieved documents, already resolved to tokens (so the
training pipeline reads rows, never the index):

    id, source, license, attribution           bytes
    text, image                                 int64 [*]  (caption ids, image code ids)
    retrieved_ids                               bytes [k]
    retrieved_text, retrieved_text_lengths      ragged int64: k texts, flattened + lengths
    retrieved_image, retrieved_image_lengths    ragged int64: k images, flattened + lengths
    qa_question, qa_question_lengths,           ragged int64: question / answer pairs (instruction
    qa_answer, qa_answer_lengths                tuning; empty for sources without them)
    edit_instruction, edit_image                int64 [*]  (edit pair; empty when absent)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Iterable, Iterator, Mapping, Optional, Sequence

from etils import epath
import numpy as np
import tensorflow as tf

INT_FEATURES = ("text", "image", "retrieved_text", "retrieved_text_lengths", "retrieved_image",
                "retrieved_image_lengths", "qa_question", "qa_question_lengths", "qa_answer",
                "qa_answer_lengths", "edit_instruction", "edit_image")
BYTES_FEATURES = ("id", "source", "license", "attribution")
MANIFEST = "manifest.json"


def shard_name(index: int, count: int) -> str:
    return f"shard-{index:05d}-of-{count:05d}.tfrecord"


def shard_of(document_id: str, count: int) -> int:
    """Stable shard of a document (hash of its id), so a removal touches only its own shard."""
    return int.from_bytes(hashlib.sha256(document_id.encode()).digest()[:8], "little") % count


def ragged(parts: Sequence[Sequence[int]]) -> tuple[list[int], list[int]]:
    flat = [int(v) for part in parts for v in part]
    return flat, [len(part) for part in parts]


def unragged(flat: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
    bounds = np.cumsum([0, *lengths])
    return [np.asarray(flat[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def serialize(record: Mapping) -> bytes:
    features = {}
    for name in BYTES_FEATURES:
        value = record.get(name, "")
        features[name] = tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[value.encode() if isinstance(value, str) else value]))
    features["retrieved_ids"] = tf.train.Feature(bytes_list=tf.train.BytesList(
        value=[v.encode() for v in record.get("retrieved_ids", ())]))
    for name in INT_FEATURES:
        values = np.asarray(record.get(name, ()), np.int64).reshape(-1)
        features[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=values.tolist()))
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


FEATURE_SPEC = {
    **{name: tf.io.FixedLenFeature([], tf.string) for name in BYTES_FEATURES},
    "retrieved_ids": tf.io.VarLenFeature(tf.string),
    **{name: tf.io.VarLenFeature(tf.int64) for name in INT_FEATURES},
}


def parse_numpy(serialized: bytes) -> dict:
    """One record as numpy / Python values (for tools and tests)."""
    example = tf.train.Example.FromString(serialized)
    feature = example.features.feature
    out = {name: feature[name].bytes_list.value[0].decode() for name in BYTES_FEATURES}
    out["retrieved_ids"] = [v.decode() for v in feature["retrieved_ids"].bytes_list.value]
    for name in INT_FEATURES:
        out[name] = np.asarray(feature[name].int64_list.value, np.int32)
    return out


def checksum(path: epath.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclasses.dataclass
class ShardInfo:
    name: str
    sha256: str
    documents: int
    tokens: int
    document_ids: list[str]
    by_source: dict
    by_license: dict
    tokens_by_license: dict

    def sidecar(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


def sidecar_path(path: epath.Path) -> epath.Path:
    return path.with_suffix(".json")


def write_shard(path: epath.Path, records: Iterable[bytes], info_fields: dict) -> ShardInfo:
    """Writes a shard atomically (temp file + rename), then its sidecar: a crash leaves either no
    sidecar (rebuilt next time) or a complete, checksummed shard."""
    tmp = path.parent / (path.name + ".incomplete")
    with tf.io.TFRecordWriter(str(tmp)) as writer:
        for record in records:
            writer.write(record)
    tmp.replace(path)
    info = ShardInfo(name=path.name, sha256=checksum(path), **info_fields)
    sidecar_path(path).write_text(info.sidecar())
    return info


def read_info(path: epath.Path) -> Optional[ShardInfo]:
    """The shard's sidecar if the shard is finished and intact, else None (missing or corrupt)."""
    side = sidecar_path(path)
    if not path.exists() or not side.exists():
        return None
    try:
        info = ShardInfo(**json.loads(side.read_text()))
    except (json.JSONDecodeError, TypeError):
        return None
    return info if checksum(path) == info.sha256 else None


def split_dir(root: str | epath.Path, split: str) -> epath.Path:
    return epath.Path(root) / split


def read_manifest(root: str | epath.Path) -> dict:
    path = epath.Path(root) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run `python -m cm3leon_jax.data.prepare` "
                                "with the same --workdir first")
    return json.loads(path.read_text())


def shard_files(root: str | epath.Path, split: str) -> list[str]:
    """The split's shard files, in order, as listed by the manifest (missing ones are an error)."""
    manifest = read_manifest(root)
    if split not in manifest["splits"]:
        raise ValueError(f"split {split!r} was not prepared; prepared splits: "
                         f"{', '.join(manifest['splits'])}")
    files = [split_dir(root, split) / s["name"] for s in manifest["splits"][split]["shards"]]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise FileNotFoundError(f"prepared shards missing: {', '.join(missing[:5])}; re-run prepare")
    return [str(f) for f in files]


def read_records(root: str | epath.Path, split: str) -> Iterator[dict]:
    """The split's records in shard order, parsed (`parse_numpy`), one at a time: for tools that
    look at the first few (sample captions, which SFT tasks the data supplies)."""
    for path in shard_files(root, split):
        for serialized in tf.data.TFRecordDataset(path).as_numpy_iterator():
            yield parse_numpy(serialized)


def write_manifest(root: str | epath.Path, splits: Mapping[str, Sequence[ShardInfo]],
                   **extra) -> dict:
    """Writes `<root>/manifest.json` for finished shards, in the form `prepare` writes it.

    `splits` maps a split to its shards' infos (as `write_shard` returns them), in order. The
    fingerprint is `provenance.fingerprint` over `{"<split>/<shard name>": sha256}`, as `prepare`
    computes it, so tools and tests that write shards directly get a manifest the training pipeline
    and the checkpoint guard read exactly like a prepared one. `extra` keys (e.g. `vocab`) are
    stored as given. Returns the manifest.
    """
    from cm3leon_jax.data.offline import provenance

    listing, checksums = {}, {}
    for split, infos in splits.items():
        listing[split] = {"shards": [{"name": i.name, "sha256": i.sha256, "documents": i.documents,
                                      "tokens": i.tokens} for i in infos],
                          "documents": sum(i.documents for i in infos),
                          "tokens": sum(i.tokens for i in infos)}
        checksums.update({f"{split}/{i.name}": i.sha256 for i in infos})
    manifest = {"splits": listing, "fingerprint": provenance.fingerprint(checksums), **extra}
    path = epath.Path(root)
    path.mkdir(parents=True, exist_ok=True)
    (path / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def write_split(root: str | epath.Path, split: str, records: Sequence[Mapping],
                num_shards: int) -> list[ShardInfo]:
    """Writes record dicts (the `serialize` schema) as a split's shards, as `prepare` lays them out
    (shard = hash of the id, records sorted by id inside a shard; shards no record hashes to are
    not written). For tools, benchmarks and tests that make token data without the Beam pipeline;
    follow with `write_manifest`. Returns the written shards' infos in shard order."""
    directory = split_dir(root, split)
    directory.mkdir(parents=True, exist_ok=True)
    by_shard: dict[int, list[Mapping]] = {}
    for record in records:
        by_shard.setdefault(shard_of(str(record["id"]), num_shards), []).append(record)
    infos = []
    for index in sorted(by_shard):
        chosen = sorted(by_shard[index], key=lambda r: str(r["id"]))
        tokens = sum(len(r.get(k, ())) for r in chosen
                     for k in ("text", "image", "retrieved_text", "retrieved_image"))
        by_source: dict[str, int] = {}
        by_license: dict[str, int] = {}
        for record in chosen:
            by_source[record.get("source", "")] = by_source.get(record.get("source", ""), 0) + 1
            by_license[record.get("license", "")] = by_license.get(record.get("license", ""),
                                                                   0) + 1
        infos.append(write_shard(directory / shard_name(index, num_shards),
                                 (serialize(r) for r in chosen),
                                 {"documents": len(chosen), "tokens": tokens,
                                  "document_ids": [str(r["id"]) for r in chosen],
                                  "by_source": by_source, "by_license": by_license,
                                  "tokens_by_license": {}}))
    return infos
