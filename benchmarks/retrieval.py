"""ScaNN against exact search on a clustered memory bank: recall@10, queries/s, build time.

    nice -n 5 python benchmarks/retrieval.py                         # 1,000,000 x 256, 10k queries
    python benchmarks/retrieval.py --num_points 100000 --num_queries 2000   # a quicker look

One run measures, on the same machine and data:

* the peak of a 2048^2 float32 jnp.dot (GFLOP/s), so figures compare across machines as ratios;
* exact search: a batched, jitted JAX matmul + lax.top_k (`index.exact_search`), at several batch
  sizes on a warm-up subset; the fastest then answers every query (the ground truth) and is the
  reported exact queries/s;
* ScaNN (`index.build_scann`, parameters from `index.scann_parameters` unless given): build time
  (wall and process CPU seconds: on a shared machine the CPU time says what an idle one would
  take), then recall@10 against the ground truth and queries/s (`search_batched_parallel`) for a sweep of
  query-time settings (leaves searched x reorder size) over the one built index.

The chosen setting is the fastest one with recall@10 >= --target_recall. Results go to
benchmarks/results/retrieval.json (and a table on stdout); docs/BENCHMARKS.md (Retrieval) quotes them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from cm3leon_jax.retrieval import index, synthetic  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "retrieval.json"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_points", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--num_clusters", type=int, default=0, help="0: num_points / 1000")
    parser.add_argument("--spread", type=float, default=1.0,
                        help="noise norm around each unit cluster centre")
    parser.add_argument("--num_queries", type=int, default=10_000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--exact_batch_sizes", default="64,128,256,512")
    parser.add_argument("--exact_warmup_queries", type=int, default=1024)
    parser.add_argument("--num_leaves", default="0",
                        help="comma list, one build each; 0: derived from num_points")
    parser.add_argument("--leaves_to_search", type=int, default=0, help="0: derived")
    parser.add_argument("--training_sample_size", type=int, default=0, help="0: derived")
    parser.add_argument("--dims_per_block", type=int, default=2)
    parser.add_argument("--anisotropic_threshold", type=float, default=0.0,
                        help="0: isotropic asymmetric hashing; e.g. 0.2: anisotropic")
    parser.add_argument("--ah_training_sample_size", type=int, default=0, help="0: derived")
    parser.add_argument("--reorder", type=int, default=0, help="0: derived")
    parser.add_argument("--sweep_leaves_to_search", default="",
                        help="comma list searched at query time (default: around the derived one)")
    parser.add_argument("--sweep_reorder", default="", help="comma list (default: around derived)")
    parser.add_argument("--scann_batch_size", type=int, default=256)
    parser.add_argument("--num_shards", default="4",
                        help="comma list: the bank as S ScaNN trees searched apart and merged "
                             "(index.ShardedScann), compared with one tree; empty: skip")
    parser.add_argument("--target_recall", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(RESULTS))
    return parser.parse_args(argv)


def matmul_peak_gflops(size: int = 2048, repeats: int = 5) -> float:
    a = jnp.ones((size, size), jnp.float32)
    dot = jax.jit(lambda x, y: x @ y)
    dot(a, a).block_until_ready()
    start = time.perf_counter()
    for _ in range(repeats):
        dot(a, a).block_until_ready()
    return 2 * size ** 3 * repeats / (time.perf_counter() - start) / 1e9


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, truth)]))


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def run(args: argparse.Namespace) -> dict:
    log = lambda *a: print(*a, flush=True)
    peak = matmul_peak_gflops()
    log(f"jnp.dot 2048^2 float32 peak: {peak:.0f} GFLOP/s")

    # ---- data
    rng = np.random.default_rng(args.seed)
    clusters = args.num_clusters or max(1, args.num_points // 1000)
    start = time.perf_counter()
    bank, centres = synthetic.clustered_unit_vectors(args.num_points, args.dim, clusters,
                                                     args.spread, rng)
    queries, _ = synthetic.clustered_unit_vectors(args.num_queries, args.dim, 0, args.spread, rng,
                                                  centres=centres)
    log(f"data: {args.num_points} x {args.dim} in {clusters} clusters, {args.num_queries} queries "
        f"({time.perf_counter() - start:.1f} s)")

    # ---- exact search: best batch size on a warm-up subset, then every query
    exact_rows = {}
    warm = queries[:min(args.exact_warmup_queries, len(queries))]
    for batch in ints(args.exact_batch_sizes):
        searcher = index.ExactSearcher(bank, batch)
        searcher.search(warm[:batch], args.k)  # compile
        start = time.perf_counter()
        searcher.search(warm, args.k)
        exact_rows[batch] = len(warm) / (time.perf_counter() - start)
        log(f"exact, batch {batch}: {exact_rows[batch]:.0f} queries/s")
    best_batch = max(exact_rows, key=exact_rows.get)
    searcher = index.ExactSearcher(bank, best_batch)
    start, cpu_start = time.perf_counter(), time.process_time()
    truth, _ = searcher.search(queries, args.k)
    exact_seconds = time.perf_counter() - start
    exact_cpu_seconds = time.process_time() - cpu_start
    exact_qps = len(queries) / exact_seconds
    exact_gflops = 2 * args.dim * args.num_points * exact_qps / 1e9
    log(f"exact, batch {best_batch}, all queries: {exact_qps:.0f} queries/s "
        f"({exact_gflops:.0f} GFLOP/s in the matmul = {exact_gflops / peak:.0%} of peak)")
    del searcher

    # ---- ScaNN: one build per tree size, then a query-time sweep over each built index
    rows, builds, library_default = [], [], None
    for num_leaves in ints(args.num_leaves):
        params = index.scann_parameters(
            args.num_points, args.k, num_leaves=num_leaves,
            leaves_to_search=args.leaves_to_search, training_sample_size=args.training_sample_size,
            ah_training_sample_size=args.ah_training_sample_size,
            dims_per_block=args.dims_per_block, anisotropic_threshold=args.anisotropic_threshold,
            reorder=args.reorder)
        leaves_sweep = ints(args.sweep_leaves_to_search) or sorted(
            {max(1, round(params.leaves_to_search * f)) for f in (0.5, 1.0, 2.0, 4.0)})
        leaves_sweep = sorted({min(leaves, params.num_leaves) for leaves in leaves_sweep}
                              | {params.leaves_to_search})
        reorder_sweep = ints(args.sweep_reorder) or sorted(
            {max(args.k, round(params.reorder * f)) for f in (0.5, 1.0, 2.0)})
        # A searcher never searches more leaves than it was built for (ScaNN's max_spill_centers),
        # so build for the largest setting of the sweep; fewer are chosen per query below.
        built_for = dataclasses.replace(params, leaves_to_search=max(leaves_sweep))
        start, cpu_start = time.perf_counter(), time.process_time()
        scann = index.build_scann(bank, built_for)
        build_seconds = time.perf_counter() - start
        build_cpu_seconds = time.process_time() - cpu_start
        builds.append({"parameters": dataclasses.asdict(built_for),
                       "build_seconds": round(build_seconds, 1),
                       "build_cpu_seconds": round(build_cpu_seconds, 1)})
        log(f"ScaNN build: {build_seconds:.1f} s ({build_cpu_seconds:.1f} CPU s) with {built_for}")
        for leaves in leaves_sweep:
            for reorder in reorder_sweep:
                setting = dataclasses.replace(params, leaves_to_search=leaves, reorder=reorder)
                index.scann_search(scann, queries[:256], args.k, setting, args.scann_batch_size)
                start, cpu_start = time.perf_counter(), time.process_time()
                found, _ = index.scann_search(scann, queries, args.k, setting,
                                              args.scann_batch_size)
                seconds = time.perf_counter() - start
                cpu_seconds = time.process_time() - cpu_start
                row = {"num_leaves": params.num_leaves, "leaves_to_search": leaves,
                       "reorder": reorder, "build_seconds": round(build_seconds, 1),
                       f"recall@{args.k}": round(recall(found, truth), 4),
                       "queries_per_second": round(len(queries) / seconds, 1),
                       "speedup_vs_exact": round(len(queries) / seconds / exact_qps, 1),
                       "cpu_speedup_vs_exact": round(exact_cpu_seconds / cpu_seconds, 1)}
                rows.append(row)
                if num_leaves == 0 and (leaves, reorder) == (params.leaves_to_search,
                                                             params.reorder):
                    library_default = row
                log(f"ScaNN leaves {params.num_leaves:5d} searched {leaves:4d} reorder "
                    f"{reorder:4d}: recall@{args.k} {row[f'recall@{args.k}']:.4f}, "
                    f"{row['queries_per_second']:8.0f} queries/s, "
                    f"{row['speedup_vs_exact']:5.1f}x exact")
        del scann
    sharded = sharded_search(args, bank, queries, truth, exact_qps, library_default)
    good = [r for r in rows if r[f"recall@{args.k}"] >= args.target_recall]
    chosen = max(good, key=lambda r: r["queries_per_second"]) if good else \
        max(rows, key=lambda r: r[f"recall@{args.k}"])
    log(f"chosen: {chosen}")
    if library_default is not None:
        log(f"library default (index.scann_parameters): {library_default}")

    return {
        "command": " ".join(["python", "benchmarks/retrieval.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_average_1m_at_end": round(os.getloadavg()[0], 2),
                    "jax": jax.__version__, "jax_backend": jax.default_backend(),
                    "matmul_peak_gflops": round(peak, 1)},
        "data": {"num_points": args.num_points, "dim": args.dim, "num_clusters": clusters,
                 "spread": args.spread, "num_queries": args.num_queries, "k": args.k},
        "exact": {"batch_size": best_batch, "queries_per_second": round(exact_qps, 1),
                  "cpu_seconds": round(exact_cpu_seconds, 1),
                  "matmul_gflops": round(exact_gflops, 1),
                  "warmup_queries_per_second_by_batch": {str(b): round(q, 1)
                                                         for b, q in exact_rows.items()}},
        "scann": {"builds": builds, "search_batch_size": args.scann_batch_size, "sweep": rows},
        "chosen": {**chosen, "meets_target_recall": chosen[f"recall@{args.k}"] >= args.target_recall},
        "library_default": library_default,
        "sharded": sharded,
    }


def sharded_search(args, bank, queries, truth, exact_qps, one_tree) -> list[dict]:
    """Recall@k and speed of the bank split into S trees (derived parameters per shard) next to
    the one tree with derived parameters (`one_tree`, the sweep's library-default row)."""
    results = []
    for num_shards in ints(args.num_shards):
        params = index.scann_parameters(
            args.num_points, args.k, training_sample_size=args.training_sample_size,
            ah_training_sample_size=args.ah_training_sample_size,
            dims_per_block=args.dims_per_block, anisotropic_threshold=args.anisotropic_threshold,
            reorder=args.reorder, num_shards=num_shards)
        start, cpu_start = time.perf_counter(), time.process_time()
        searcher = index.ShardedScann.build(bank, params)
        build_seconds, build_cpu = time.perf_counter() - start, time.process_time() - cpu_start
        searcher.search(queries[:256], args.k, params, args.scann_batch_size)
        start = time.perf_counter()
        found, _ = searcher.search(queries, args.k, params, args.scann_batch_size)
        seconds = time.perf_counter() - start
        row = {"num_shards": num_shards, "parameters_per_shard": dataclasses.asdict(params),
               "build_seconds": round(build_seconds, 1), "build_cpu_seconds": round(build_cpu, 1),
               f"recall@{args.k}": round(recall(found, truth), 4),
               "queries_per_second": round(len(queries) / seconds, 1),
               "speedup_vs_exact": round(len(queries) / seconds / exact_qps, 1)}
        if one_tree is not None:
            row[f"recall@{args.k}_minus_one_tree"] = round(
                row[f"recall@{args.k}"] - one_tree[f"recall@{args.k}"], 4)
            row["within_0.01_of_one_tree"] = row[f"recall@{args.k}_minus_one_tree"] >= -0.01
        results.append(row)
        print(f"ScaNN, {num_shards} shards: {row}", flush=True)
        del searcher
    return results


def main(argv=None) -> None:
    args = parse_args(argv)
    result = run(args)
    output = pathlib.Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
