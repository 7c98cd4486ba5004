"""Speed of data preparation (`cm3leon_jax.data.prepare`, Apache Beam) against its ceiling.

    PYTHONPATH=. python benchmarks/prepare.py [--documents 2000] [--image_size 32]

Measures, in one run on this machine:
* the ceiling: images/s of the bare jitted VQ-GAN encoder (`ImageTokenizer.encode` on batches of
  64 already in memory, compiled before timing), measured before and after the runs below (the
  machine is shared: their mean is the ceiling, both are recorded);
* documents/s (each document = one caption + one image VQ-encoded, plus its edit image for
  `shapes`) of the whole `prepare` with the DirectRunner and 1 worker, then 2 workers
  (multi_processing), from tfds read to checksummed shards, the data set already built. A whole
  run includes fixed costs (Beam start, compiling the VQ-GAN in the worker, manifest and card);
* the steady state of 1 worker: the extra images/s of a run of `--documents` over one of a
  quarter as many, (images(N) - images(N/4)) / (seconds(N) - seconds(N/4)), the fixed costs
  cancelling out: what a large corpus sees (after an untimed warm-up run of 64 documents, so that
  neither timed run pays the process's first-use imports).
Writes benchmarks/results/prepare.json with the figures, their ratios and the load average
(target: 1 worker >= 70% of the bare encoder). The VQ-GAN is a freshly initialised one of the tiny
tokenizer's shape: speed does not depend on the weights.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

import ml_collections
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))
import tiny_stack  # noqa: E402

from cm3leon_jax import config  # noqa: E402
from cm3leon_jax.data import prepare  # noqa: E402
from cm3leon_jax.data.sources import catalog  # noqa: E402
from cm3leon_jax.vocab import Vocabulary  # noqa: E402


def bare_encoder_images_per_s(vocab: Vocabulary, image_size: int, batches: int = 20) -> float:
    tokenizer = vocab.image_tokenizer(batch_size=64)
    images = np.random.default_rng(0).integers(0, 255, (64, image_size, image_size, 3), np.uint8)
    tokenizer.encode(images)  # compile
    start = time.perf_counter()
    for _ in range(batches):
        tokenizer.encode(images)
    return 64 * batches / (time.perf_counter() - start)


def prepare_run(root: pathlib.Path, vocab_dir: pathlib.Path, documents: int, image_size: int,
                workers: int) -> tuple[int, float]:
    """(images encoded, seconds) of one whole `prepare` of the train split."""
    cfg = ml_collections.ConfigDict()
    cfg.data = ml_collections.ConfigDict(dict(num_train=documents, num_validation=16,
                                              num_test=16, image_size=image_size,
                                              data_dir=str(root / f"tfds{documents}")))
    options = () if workers == 1 else (f"--direct_num_workers={workers}",
                                       "--direct_running_mode=multi_processing")
    cfg.prepare = ml_collections.ConfigDict(dict(num_shards=8, encode_batch_size=64,
                                                 splits=("train",), retrieval="off",
                                                 vocab_dir=str(vocab_dir), beam_options=options))
    catalog.prepared_builder(config.data_config(cfg), str(root))  # build the data set untimed
    workdir = root / f"work{workers}_{documents}"
    start = time.perf_counter()
    figures = prepare.prepare(cfg, str(workdir))
    seconds = time.perf_counter() - start
    return 2 * figures["kept"]["train"], seconds  # shapes: the image and the edited image


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--documents", type=int, default=2000)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--output", default="benchmarks/results/prepare.json")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        vocab = tiny_stack.write_vocab(root / "vocab", image_size=args.image_size)
        ceiling_before = bare_encoder_images_per_s(vocab, args.image_size)
        prepare_run(root, root / "vocab", 64, args.image_size, 1)  # warm-up: first-use imports
        small_images, small_seconds = prepare_run(root, root / "vocab", args.documents // 4,
                                                  args.image_size, 1)
        one_images, one_seconds = prepare_run(root, root / "vocab", args.documents,
                                              args.image_size, 1)
        two_images, two_seconds = prepare_run(root, root / "vocab", args.documents,
                                              args.image_size, 2)
        ceiling_after = bare_encoder_images_per_s(vocab, args.image_size)
    ceiling = (ceiling_before + ceiling_after) / 2
    steady = (one_images - small_images) / max(one_seconds - small_seconds, 1e-9)
    result = {
        "documents": args.documents, "image_size": args.image_size,
        "bare_encoder_images_per_s": ceiling,
        "bare_encoder_images_per_s_before_after": [ceiling_before, ceiling_after],
        "prepare_1_worker": {"documents_per_s": one_images / 2 / one_seconds,
                             "images_per_s": one_images / one_seconds, "seconds": one_seconds},
        "prepare_1_worker_quarter": {"documents": args.documents // 4, "seconds": small_seconds},
        "prepare_1_worker_steady_state_images_per_s": steady,
        "prepare_2_workers": {"documents_per_s": two_images / 2 / two_seconds,
                              "images_per_s": two_images / two_seconds, "seconds": two_seconds},
        "ratio_1_worker_to_bare_encoder": one_images / one_seconds / ceiling,
        "ratio_1_worker_steady_state_to_bare_encoder": steady / ceiling,
        "ratio_2_workers_to_1": (two_images / two_seconds) / (one_images / one_seconds),
        "load_average_1min_before_after": [round(load_before[0], 2),
                                           round(os.getloadavg()[0], 2)],
        "cpu_count": os.cpu_count(),
    }
    path = pathlib.Path(args.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
