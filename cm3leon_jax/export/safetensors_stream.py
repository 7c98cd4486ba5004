"""Streaming, sharded safetensors writer: one tensor in memory at a time, shards of bounded size.

`safetensors.numpy.save_file` needs every tensor of a file in memory at once; a 7B model in f32 is
28 GB. The format is simple enough to write incrementally: an 8-byte little-endian header length,
a JSON header giving each tensor's dtype, shape and byte range, then the raw bytes in that order.
Shapes and dtypes are known before any tensor is read (from checkpoint metadata), so the shard
layout and every header are planned up front (`plan_shards`) and each tensor is appended to its
shard as it is produced (`ShardedWriter.write`). Peak memory is the largest single tensor.

Files follow transformers' convention: `model.safetensors` for one shard, otherwise
`model-00001-of-0000N.safetensors` plus `model.safetensors.index.json`
({"metadata": {"total_size"}, "weight_map": {tensor name: file}}), which `from_pretrained` reads.
A tensor larger than `max_shard_bytes` gets a shard of its own (tensors are never split).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import struct
from typing import Optional, Sequence

import ml_dtypes
import numpy as np

SAFETENSORS_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16",
                      np.dtype(ml_dtypes.bfloat16): "BF16", np.dtype(np.float64): "F64",
                      np.dtype(np.int32): "I32", np.dtype(np.int64): "I64",
                      np.dtype(np.uint8): "U8", np.dtype(np.bool_): "BOOL"}
NUMPY_DTYPES = {code: dtype for dtype, code in SAFETENSORS_DTYPES.items()}
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize


def plan_shards(specs: Sequence[TensorSpec], max_shard_bytes: int) -> list[list[TensorSpec]]:
    """Consecutive groups of tensors, each at most `max_shard_bytes` (or one oversized tensor)."""
    if max_shard_bytes < 1:
        raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards if shards[0] else []


def shard_file_names(count: int, prefix: str = "model") -> list[str]:
    if count == 1:
        return [f"{prefix}.safetensors"]
    return [f"{prefix}-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


def _header(specs: Sequence[TensorSpec], metadata: dict[str, str]) -> bytes:
    entries: dict = {"__metadata__": metadata}
    offset = 0
    for spec in specs:
        entries[spec.name] = {"dtype": SAFETENSORS_DTYPES[np.dtype(spec.dtype)],
                              "shape": list(spec.shape),
                              "data_offsets": [offset, offset + spec.nbytes]}
        offset += spec.nbytes
    raw = json.dumps(entries, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw


class ShardedWriter:
    """Writes tensors, in the planned order, into shards under `directory`."""

    def __init__(self, directory: str | os.PathLike, specs: Sequence[TensorSpec],
                 max_shard_bytes: int, prefix: str = "model",
                 metadata: Optional[dict[str, str]] = None):
        self.directory = os.fspath(directory)
        self.shards = plan_shards(specs, max_shard_bytes)
        self.files = shard_file_names(len(self.shards), prefix)
        self.prefix = prefix
        self.metadata = {"format": "pt", **(metadata or {})}
        self._order = [spec for shard in self.shards for spec in shard]
        self._next = 0
        self._shard = -1
        self._handle = None
        self._shard_end = 0

    def _open_next_shard(self) -> None:
        if self._handle is not None:
            self._handle.close()
        self._shard += 1
        self._handle = open(os.path.join(self.directory, self.files[self._shard]), "wb")
        self._handle.write(_header(self.shards[self._shard], self.metadata))
        self._shard_end = self._next + len(self.shards[self._shard])

    def write(self, name: str, array: np.ndarray) -> None:
        if self._next >= len(self._order):
            raise ValueError(f"unexpected tensor {name!r}: all {len(self._order)} planned tensors "
                             "are written")
        spec = self._order[self._next]
        array = np.asarray(array)
        if (name, tuple(array.shape), array.dtype) != (spec.name, spec.shape,
                                                       np.dtype(spec.dtype)):
            raise ValueError(f"tensor {self._next} should be {spec.name} {spec.shape} "
                             f"{np.dtype(spec.dtype)}, got {name} {array.shape} {array.dtype}")
        if self._next == 0 or self._next == self._shard_end:
            self._open_next_shard()
        self._handle.write(np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"),
                                                              copy=False).tobytes())
        self._next += 1

    def close(self) -> list[str]:
        """Finishes the last shard and writes the index (several shards); returns the files."""
        if self._next != len(self._order):
            missing = [spec.name for spec in self._order[self._next:]]
            raise ValueError(f"{len(missing)} planned tensors were never written: {missing[:5]}")
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if len(self.files) > 1:
            weight_map = {spec.name: file for shard, file in zip(self.shards, self.files)
                          for spec in shard}
            index = {"metadata": {"total_size": sum(spec.nbytes for spec in self._order)},
                     "weight_map": weight_map}
            with open(os.path.join(self.directory, f"{self.prefix}.safetensors.index.json"),
                      "w") as handle:
                json.dump(index, handle, indent=2, sort_keys=True)
                handle.write("\n")
        return list(self.files)


def tensor_files(directory: str | os.PathLike, prefix: str = "model") -> list[str]:
    """The safetensors files of a (possibly sharded) export directory."""
    directory = os.fspath(directory)
    index = os.path.join(directory, f"{prefix}.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as handle:
            weight_map = json.load(handle)["weight_map"]
        return [os.path.join(directory, name) for name in sorted(set(weight_map.values()))]
    single = os.path.join(directory, f"{prefix}.safetensors")
    if os.path.exists(single):
        return [single]
    raise FileNotFoundError(f"{directory} holds no {prefix}.safetensors nor "
                            f"{prefix}.safetensors.index.json")


def read_header(path: str) -> tuple[dict, int]:
    """(header dict, byte offset of the data section) of one safetensors file."""
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    return header, 8 + length


class TensorReader:
    """Reads tensors by name from a (sharded) directory, one at a time, through a memory map.

    Parses the format itself (rather than `safetensors.safe_open(framework="numpy")`) so that
    bfloat16 tensors come back as `ml_dtypes.bfloat16` arrays instead of failing in numpy.
    """

    def __init__(self, directory: str | os.PathLike, prefix: str = "model"):
        self._where: dict[str, tuple[str, int, dict]] = {}
        for path in tensor_files(directory, prefix):
            header, data_start = read_header(path)
            header.pop("__metadata__", None)
            for name, entry in header.items():
                self._where[name] = (path, data_start, entry)

    def names(self) -> list[str]:
        return sorted(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entry(name)[2]["shape"])

    def _entry(self, name: str) -> tuple[str, int, dict]:
        if name not in self._where:
            raise KeyError(f"tensor {name!r} is not in the checkpoint")
        return self._where[name]

    def read(self, name: str) -> np.ndarray:
        path, data_start, entry = self._entry(name)
        if entry["dtype"] not in NUMPY_DTYPES:
            raise ValueError(f"tensor {name!r} has dtype {entry['dtype']}, which this reader "
                             f"does not handle ({', '.join(sorted(NUMPY_DTYPES))})")
        dtype = NUMPY_DTYPES[entry["dtype"]].newbyteorder("<")
        begin, end = entry["data_offsets"]
        shape = tuple(entry["shape"])
        if end == begin:
            return np.zeros(shape, dtype)
        mapped = np.memmap(path, dtype=dtype, mode="r", offset=data_start + begin, shape=shape)
        return np.array(mapped)
