"""Training pairs of the super-resolution stage: one picture at base and at high resolution.

* `shapes`: the builder renders every scene from its description at any size
  (`data/sources/shapes/render.py` draws in normalised coordinates), and a scene depends only on
  (seed, split, index), never on the image size. So the data set built at `image_size=32` and the
  one built at `image_size=64` hold the same scenes under the same ids; `load_pairs` zips the two
  builds and checks the ids agree. The low-resolution image is a true rendering, not a downsampled copy.
* every other source (a user folder, tfds by name, WebDataset): read at the high resolution; the
  low-resolution image is its bicubic (antialiased) downsampled copy.

`encode_pairs` turns pairs into code grids with both VQ-GANs (cached in the run directory, keyed by
the tokenizers' fingerprints and the data config), and `PairBatches` serves the training loop's
rows (`UpsamplerVocab.row`: optionally the caption, the low codes aligned to the high grid, then
the high codes with the loss on them only) as resumable global batches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Optional

from etils import epath
import numpy as np

from cm3leon_jax.config import DataConfig
from cm3leon_jax.data.input import pipeline


def resolutions(data: DataConfig, high_size: int) -> tuple[DataConfig, DataConfig]:
    """(low, high) data configs: `data` is the base resolution; high renders at `high_size`."""
    if high_size <= data.image_size:
        raise ValueError(f"the high resolution ({high_size}) must exceed the base one "
                         f"(data.image_size={data.image_size})")
    return data, dataclasses.replace(data, image_size=high_size)


def load_pairs(data: DataConfig, workdir: str, split: str, high_size: int,
               limit: Optional[int] = None) -> dict:
    """{"ids": [N], "captions": [N], "low": uint8 [N, s, s, 3], "high": uint8 [N, S, S, 3],
    "objects": per-example object keys (shapes) or None}."""
    from cm3leon_jax import image_metrics  # noqa: PLC0415
    from cm3leon_jax.data.sources import catalog  # noqa: PLC0415
    from cm3leon_jax.data.sources.shapes import builder  # noqa: PLC0415

    low_cfg, high_cfg = resolutions(data, high_size)
    high_examples = list(catalog.numpy_examples(high_cfg, workdir, split, limit=limit))
    if not high_examples:
        raise ValueError(f"the {split} split is empty")
    ids = [str(e["id"]) for e in high_examples]
    high = np.stack([e["image"] for e in high_examples])
    if data.source == "shapes":
        low_examples = list(catalog.numpy_examples(low_cfg, workdir, split, limit=limit))
        low_ids = [str(e["id"]) for e in low_examples]
        if low_ids != ids:
            raise ValueError(f"the shapes builds at {data.image_size} and {high_size} pixels hold "
                             f"different examples ({low_ids[:3]} vs {ids[:3]}): not pairs")
        low = np.stack([e["image"] for e in low_examples])
    else:
        low = image_metrics.bicubic(high, data.image_size)
    objects = None
    if all("objects" in e for e in high_examples):
        objects = [builder.decode_objects(e["objects"]) for e in high_examples]
    return {"ids": ids, "captions": [str(e.get("caption", "")) for e in high_examples],
            "low": low, "high": high, "objects": objects}


def codes_fingerprint(data: DataConfig, split: str, high_size: int, limit: Optional[int],
                      low_fingerprint: str, high_fingerprint: str) -> str:
    description = json.dumps({"data": dataclasses.asdict(data), "split": split,
                              "high_size": high_size, "limit": limit, "low": low_fingerprint,
                              "high": high_fingerprint}, sort_keys=True)
    return hashlib.sha256(description.encode()).hexdigest()


def encode_pairs(pairs: dict, low_tokenizer, high_tokenizer, cache: Optional[epath.Path] = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(low codes int32 [N, h, w], high codes int32 [N, H, W]); read from / written to `cache`
    (an .npz path) when given."""
    if cache is not None and cache.exists():
        with cache.open("rb") as file:
            stored = np.load(file)
            if list(stored["ids"]) == list(pairs["ids"]):
                return stored["low"], stored["high"]
    low = low_tokenizer.encode(pairs["low"])
    high = high_tokenizer.encode(pairs["high"])
    if cache is not None:
        import jax  # noqa: PLC0415

        if jax.process_index() == 0:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.parent / (cache.name + ".tmp.npz")
            with tmp.open("wb") as file:
                np.savez(file, ids=np.asarray(pairs["ids"]), low=low, high=high)
            tmp.replace(cache)
    return low, high


class PairBatches(pipeline.ResumableBatches):
    """Global batches of upsampler rows for `train/loop.py` (its `DataIterator`), resumable.

    Example g of the stream (g = batches consumed * batch + row) is pair `order(g // N)[g % N]`,
    `order(e)` a permutation seeded by (seed, e) (`repeat`), or the pairs in order once (eval: the
    last batch is filled with zero-weight padding rows). With `caption_dropout` > 0 a row drops its
    caption with that probability, seeded by (seed, g), so the model also learns the caption-free
    prompt (`--task upscale` of an image without a caption). The state is the batches consumed
    plus a signature; resuming with a different stream is refused
    (`data/input/pipeline.ResumableBatches`).
    """

    stream_name = "the upsampler's data stream"

    def __init__(self, vocab, low_codes: np.ndarray, high_codes: np.ndarray,
                 captions: Optional[list] = None, *, seq_len: int, global_batch_size: int,
                 sharding=None, seed: int = 0, repeat: bool = True, caption_dropout: float = 0.0,
                 num_batches: Optional[int] = None, signature: Optional[dict] = None,
                 process_index: Optional[int] = None, process_count: Optional[int] = None):
        if len(low_codes) != len(high_codes) or not len(low_codes):
            raise ValueError(f"need as many low as high code grids (> 0), got {len(low_codes)} "
                             f"and {len(high_codes)}")
        import jax  # noqa: PLC0415

        self.vocab, self.low, self.high, self.captions = vocab, low_codes, high_codes, captions
        self.global_batch_size = int(global_batch_size)  # checked before the base class sets it
        self.seed, self.repeat, self.caption_dropout = seed, repeat, caption_dropout
        self.num_batches = num_batches
        self.process_index = jax.process_index() if process_index is None else process_index
        self.process_count = jax.process_count() if process_count is None else process_count
        if self.global_batch_size % self.process_count:
            raise ValueError(f"global batch {self.global_batch_size} does not split over "
                             f"{self.process_count} hosts")
        longest = vocab.max_row_length(max((len(c) for c in captions), default=0)
                                       if captions else 0)
        if longest > seq_len:
            raise ValueError(f"an upsampler row takes up to {longest} tokens but seq_len is "
                             f"{seq_len}; raise superres.seq_len (and model.max_seq_len)")
        super().__init__(sharding=sharding, global_batch_size=global_batch_size, seq_len=seq_len,
                         signature={
                             "kind": "superres", "seed": seed, "repeat": repeat,
                             "pairs": len(low_codes), "global_batch_size": self.global_batch_size,
                             "process_count": self.process_count,
                             "caption_dropout": caption_dropout, "seq_len": seq_len,
                             **(signature or {})})
        self._orders: dict[int, np.ndarray] = {}

    def _pair(self, g: int) -> int:
        count = len(self.low)
        if not self.repeat:
            return g
        epoch = g // count
        if epoch not in self._orders:
            self._orders = {epoch: np.random.default_rng([self.seed, epoch]).permutation(count)}
        return int(self._orders[epoch][g % count])

    def _row(self, g: int) -> tuple[np.ndarray, np.ndarray]:
        index = self._pair(g)
        caption = None
        if self.captions is not None:
            drop = self.caption_dropout > 0 and \
                np.random.default_rng([self.seed, 7, g]).random() < self.caption_dropout
            caption = None if drop else self.captions[index]
        return self.vocab.row(self.low[index], self.high[index], caption)

    def next_local(self) -> dict[str, np.ndarray]:
        count = len(self.low)
        start = self.consumed * self.global_batch_size
        if self.num_batches is not None and self.consumed >= self.num_batches:
            raise StopIteration
        if not self.repeat and start >= count:
            raise StopIteration
        local = self.global_batch_size // self.process_count
        first = start + self.process_index * local
        batch = {"ids": np.full((local, self.seq_len), self.vocab.pad_id, np.int32),
                 "segment_ids": np.zeros((local, self.seq_len), np.int32),
                 "positions": np.zeros((local, self.seq_len), np.int32),
                 "weights": np.zeros((local, self.seq_len), np.float32)}
        for row in range(local):
            g = first + row
            if not self.repeat and g >= count:
                continue  # padding row: segment 0, weight 0
            ids, weights = self._row(g)
            batch["ids"][row, :len(ids)] = ids
            batch["segment_ids"][row, :len(ids)] = 1
            batch["positions"][row, :len(ids)] = np.arange(len(ids))
            batch["weights"][row, :len(ids)] = weights
        self.consumed += 1
        return batch
