"""Speed of the tf.data pipeline alone, next to what a train step and a TPU host consume.

    PYTHONPATH=. python benchmarks/pipeline.py      # writes benchmarks/results/pipeline.json

Pipeline: `cm3leon_jax.data.input.pipeline.pretrain_dataset` (read shards -> shuffle -> parse -> lay
out `ret_1 <break> ret_2 <break> query <eos>` -> CM3 mask -> pack -> batch -> prefetch), default CM3
settings, training mode (endless, shuffled), one host, 8 rows per batch, on synthetic shards of
realistic documents written by this script: a caption of 18-22 text tokens and an image of 64 codes
(8x8, the small case, rows of 1,024) or 1,024 codes (32x32, rows of 4,096), each record with 2
retrieved documents of the same kind. Rows/s and tokens/s (row slots, and document tokens without
padding) over a timed window after a warm-up.

Resume cost: `Batches.set_state` rebuilds the stream and skips the consumed batches inside tf.data;
the script times a skip of many batches, which is what a resume pays per consumed batch.

Train step: the tiny config (`experiments/model_tiny.py`, 172k parameters) with the plain jitted
step of `cm3leon_jax/train/step.py` (AdamW), batch 8, at its own max_seq_len (128) and at
1,024 (max_seq_len raised; same model otherwise), measured in the same process.

TPU need: tokens/s per host that the 350M preset consumes on a TPU v5e-8 host at 50% MFU:
8 chips x 197 TFLOP/s (bf16) x 0.5 / FLOPs per token, with FLOPs per token = 6 N + 12 L d T
(N = exact parameter count of experiments/cm3leon_350m.py via `accounting.count_params`, L = 24
layers, d = 1,024, T = 4,096), and the same with `memory_plan.make_plan`'s accounting (6 x matmul weights only).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from cm3leon_jax.config import CM3Config  # noqa: E402
from cm3leon_jax.data.input import pipeline  # noqa: E402
from cm3leon_jax.data.offline import shards  # noqa: E402
from cm3leon_jax.data.input.cm3 import SpecialIds  # noqa: E402

# The paper's sizes: 56,320 text ids then 8,192 image codes, after 22 special ids.
SPECIAL = SpecialIds(pad=0, eos=1, break_=2, mask=3, boi=4, eoi=5, sentinels=tuple(range(6, 22)))
TEXT_IDS = (22, 22 + 56_320)
IMAGE_IDS = (TEXT_IDS[1], TEXT_IDS[1] + 8_192)
TPU_V5E_BF16_FLOPS = 197e12
CASES = {1024: 64, 4096: 1024}  # seq_len -> image codes per image


def make_records(count: int, codes: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)

    def caption():
        return rng.integers(*TEXT_IDS, rng.integers(18, 23)).tolist()

    def image():  # stored wrapped, as prepare writes `vocab.image_ids(codes)`
        return [SPECIAL.boi] + rng.integers(*IMAGE_IDS, codes).tolist() + [SPECIAL.eoi]

    records = []
    for i in range(count):
        texts, text_lengths = shards.ragged([caption(), caption()])
        images, image_lengths = shards.ragged([image(), image()])
        records.append({"id": f"doc-{i:06d}", "text": caption(), "image": image(),
                        "retrieved_ids": ["a", "b"], "retrieved_text": texts,
                        "retrieved_text_lengths": text_lengths, "retrieved_image": images,
                        "retrieved_image_lengths": image_lengths})
    return records


def time_pipeline(root: str, cm3: CM3Config, batch_size: int, warmup: int, seconds: float,
                  min_batches: int) -> dict:
    ds = pipeline.pretrain_dataset(root, "train", SPECIAL, cm3, batch_size=batch_size, seed=0,
                                   process_index=0, process_count=1)
    iterator = ds.as_numpy_iterator()
    start = time.perf_counter()
    for _ in range(warmup):
        next(iterator)
    first = time.perf_counter() - start
    rows = tokens = weighted = batches = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or batches < min_batches:
        batch = next(iterator)
        batches += 1
        rows += len(batch["ids"])
        tokens += int((batch["segment_ids"] > 0).sum())
        weighted += int((batch["weights"] > 0).sum())
    elapsed = time.perf_counter() - start
    return {"seq_len": cm3.seq_len, "batch_size": batch_size, "batches": batches,
            "seconds": elapsed, "rows_per_s": rows / elapsed,
            "row_tokens_per_s": rows * cm3.seq_len / elapsed,
            "document_tokens_per_s": tokens / elapsed,
            "padding_fraction": 1 - tokens / (rows * cm3.seq_len),
            "loss_tokens_fraction": weighted / (rows * cm3.seq_len),
            "warmup_seconds_first_batches": first}


def time_skip(root: str, cm3: CM3Config, batch_size: int, skip: int) -> dict:
    """Seconds to the first batch after skipping `skip` batches, minus without skipping."""
    def first_batch(skip_batches: int) -> float:
        start = time.perf_counter()
        ds = pipeline.pretrain_dataset(root, "train", SPECIAL, cm3, batch_size=batch_size,
                                       seed=0, process_index=0, process_count=1,
                                       skip_batches=skip_batches)
        next(ds.as_numpy_iterator())
        return time.perf_counter() - start

    base = min(first_batch(0) for _ in range(2))
    skipped = first_batch(skip) - base
    return {"seq_len": cm3.seq_len, "skipped_batches": skip, "seconds": skipped,
            "skipped_batches_per_s": skip / max(skipped, 1e-9),
            "skipped_rows_per_s": skip * batch_size / max(skipped, 1e-9)}


def time_train_step(seq_len: int, batch_size: int, seconds: float, min_steps: int = 3) -> dict:
    import jax  # noqa: PLC0415 - after TF, so TF's import cost is not counted twice
    import jax.numpy as jnp  # noqa: PLC0415

    from cm3leon_jax.config import MeshConfig, TrainConfig, model_config  # noqa: PLC0415
    from cm3leon_jax.parallel import mesh as mesh_lib  # noqa: PLC0415
    from cm3leon_jax.parallel import sharding as sharding_lib  # noqa: PLC0415
    from cm3leon_jax.train import decoder_task, optimizer, throughput  # noqa: PLC0415
    from cm3leon_jax.train import state as state_lib, step as step_lib  # noqa: PLC0415

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                    "experiments"))
    import model_tiny  # noqa: PLC0415

    config = model_config(model_tiny.get_config(None))
    config = dataclasses.replace(config, max_seq_len=max(config.max_seq_len, seq_len))
    mesh_config = MeshConfig(data=1, fsdp=1, tensor=1)
    mesh = mesh_lib.make_mesh(mesh_config, jax.devices()[:1])
    rules = mesh_config.logical_axis_rules()
    train = TrainConfig(steps=1000, lr=1e-3, warmup_steps=0, decay="constant")
    tx = optimizer.make_optimizer(train)
    state, shardings = state_lib.create_sharded_train_state(
        functools.partial(decoder_task.init_params, config),
        decoder_task.param_shardings(config, mesh, rules), tx, mesh, jax.random.key(0))
    step = sharding_lib.ShardedFunction(step_lib.jit_train_step(
        decoder_task.make_loss_fn(config, (0, 0)), tx, optimizer.learning_rate(train), shardings,
        sharding_lib.batch_sharding(mesh, rules)), mesh, rules)
    rng = np.random.default_rng(0)
    batch = {"ids": jnp.asarray(rng.integers(0, config.vocab_size, (batch_size, seq_len)),
                                jnp.int32),
             "segment_ids": jnp.ones((batch_size, seq_len), jnp.int32),
             "weights": jnp.ones((batch_size, seq_len), jnp.float32)}
    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    compile_seconds = time.perf_counter() - start
    for _ in range(2):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    steps, start = 0, time.perf_counter()
    while steps < min_steps or time.perf_counter() - start < seconds:
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        steps += 1
    elapsed = time.perf_counter() - start
    return {"config": "experiments/model_tiny.py", "seq_len": seq_len, "batch_size": batch_size,
            "max_seq_len": config.max_seq_len, "steps": steps,
            "tokens_per_s": steps * batch_size * seq_len / elapsed,
            "step_ms": 1000 * elapsed / steps, "first_step_seconds": compile_seconds,
            "device": str(jax.devices()[0].device_kind),
            "measured_matmul_flops_f32": throughput.measured_matmul_flops()}


def tpu_need() -> dict:
    from cm3leon_jax.models import accounting  # noqa: PLC0415
    from cm3leon_jax.parallel import memory_plan  # noqa: PLC0415
    from cm3leon_jax.config import MeshConfig, model_config  # noqa: PLC0415

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                    "experiments"))
    import cm3leon_350m  # noqa: PLC0415

    config = model_config(cm3leon_350m.get_config(None))
    params = accounting.count_params(config)
    seq_len = config.max_seq_len
    simple = 6 * params + 12 * config.num_layers * config.d_model * seq_len
    host_flops = 8 * TPU_V5E_BF16_FLOPS * 0.5
    planned = memory_plan.make_plan(config, MeshConfig(data=1, fsdp=8, tensor=1), batch_size=8)
    return {"preset": "experiments/cm3leon_350m.py", "params": params, "seq_len": seq_len,
            "host": "TPU v5e-8 (8 chips x 197 TFLOP/s bf16) at 50% MFU",
            "host_flops_at_50_mfu": host_flops,
            "flops_per_token_6n_plus_attention": simple,
            "tokens_per_s_per_host": host_flops / simple,
            "flops_per_token_plan": planned.flops_per_token["total"],
            "tokens_per_s_per_host_plan": host_flops / planned.flops_per_token["total"],
            "rows_per_s_per_host": host_flops / simple / seq_len}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--skip", type=int, default=200, help="batches skipped (resume cost)")
    parser.add_argument("--train_seconds", type=float, default=15.0)
    parser.add_argument("--output", default=os.path.join(os.path.dirname(os.path.abspath(
        __file__)), "results", "pipeline.json"))
    args = parser.parse_args()

    results = {"command": " ".join(["PYTHONPATH=. python benchmarks/pipeline.py", *sys.argv[1:]]),
               "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                           "load_average_1min_at_start": os.getloadavg()[0]},
               "pipeline": [], "resume_skip": [], "train_step": [], "tpu_need": tpu_need()}
    with tempfile.TemporaryDirectory() as tmp:
        for seq_len, codes in CASES.items():
            root = os.path.join(tmp, f"prepared_{seq_len}")
            infos = shards.write_split(root, "train", make_records(args.records, codes), 4)
            shards.write_manifest(root, {"train": infos})
            cm3 = CM3Config(seq_len=seq_len)
            figures = time_pipeline(root, cm3, args.batch_size, warmup=4, seconds=args.seconds,
                                    min_batches=20)
            figures["image_codes"] = codes
            results["pipeline"].append(figures)
            print(json.dumps(figures))
            skip = time_skip(root, cm3, args.batch_size, args.skip)
            results["resume_skip"].append(skip)
            print(json.dumps(skip))
    for seq_len in (128, 1024):
        figures = time_train_step(seq_len, args.batch_size, args.train_seconds)
        results["train_step"].append(figures)
        print(json.dumps(figures))
    results["machine"]["load_average_1min_at_end"] = os.getloadavg()[0]
    print(json.dumps(results["tpu_need"]))
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as file:
        json.dump(results, file, indent=1)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
