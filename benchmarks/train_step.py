"""Train-step throughput on CPU: this JAX decoder next to Hugging Face torch `OPTForCausalLM`.

    PYTHONPATH=. python benchmarks/train_step.py --steps 4 --warmup 1

Both sides train the same shape (cm3leon preset = OPT with `enable_bias=False`,
`layer_norm_elementwise_affine=False`, GELU, tied embeddings): d_model 512, 8 layers, 8 heads,
vocabulary 8,192, sequence 512, batch 8 (4,096 tokens per step); a full step is forward, backward
and AdamW. float32, then bfloat16 compute (JAX: `model.dtype=bfloat16` with float32 weights;
torch: `torch.autocast("cpu", bfloat16)`). torch is timed at every setting that can be its
fastest (`benchmarks/reference.py`): intra-op threads (`--torch_threads`, default 1,2) x
attention (`eager`, `sdpa`); every setting's figures are kept and JAX is divided by the best.
The steps are interleaved (jax, each torch setting, jax, ...) so that a change of machine load
during the run hits every side alike. The same process measures the matmul peak (2048^2 jnp.dot /
torch.mm at each thread count, float32 and bfloat16); the FLOP bound of a dtype is the fastest
matmul either framework ran in it, divided by the FLOPs per token, and both sides are reported as
a fraction of it.

Figures per side: tokens/s from the best and the median wall-clock step, and tokens per CPU
second (process CPU time: on a shared machine this is the steadier measure of the work done;
it counts spinning worker threads too). FLOPs per token:
`cm3leon_jax.models.accounting.flops_per_token` (6N + the attention term). Writes benchmarks/results/train_step.json.

JAX choices that matter on XLA:CPU (see models/matmul.py, models/attention.py and
docs/BENCHMARKS.md for the measurements): unrolled layers (`scan_layers=False`: a scan stacks
every layer's residuals into [layers, ...] buffers and slices them back), remat off, the state
donated, float32-accumulating bfloat16 matmuls (YNNPACK's AMX kernels), weight-gradient GEMMs in
float32, a FlashAttention-style custom VJP for attention, a one-pass custom VJP for exact GELU,
blockwise causal attention. XLA flags: `--xla_flags` passes extra ones (default: none; the
defaults measured best).
"""

from __future__ import annotations

import json
import os
import pathlib
import statistics
import sys
import time

import reference
from absl import app, flags

_STEPS = flags.DEFINE_integer("steps", 4, "Timed steps per framework and dtype.")
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed steps first (the first one compiles).")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Sequences per step.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 512, "Tokens per sequence.")
_D_MODEL = flags.DEFINE_integer("d_model", 512, "Model width.")
_LAYERS = flags.DEFINE_integer("num_layers", 8, "Decoder layers.")
_HEADS = flags.DEFINE_integer("num_heads", 8, "Attention heads.")
_VOCAB = flags.DEFINE_integer("vocab_size", 8192, "Vocabulary size.")
_DTYPES = flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "Compute dtypes to run.")
_FRAMEWORKS = flags.DEFINE_list("frameworks", ["jax", "torch"], "Which sides to run.")
_TORCH_THREADS = flags.DEFINE_string("torch_threads", reference.TORCH_THREADS,
                                     reference.THREADS_HELP)
_SCAN = flags.DEFINE_bool("scan_layers", False, "JAX: nn.scan over layers (slower on CPU).")
_XLA_FLAGS = flags.DEFINE_string("xla_flags", "", "Extra XLA_FLAGS for the JAX side.")
_MATMUL = flags.DEFINE_integer("matmul_size", 2048, "Side of the square matmul for the peak.")
_OUTPUT = flags.DEFINE_string(
    "output", str(pathlib.Path(__file__).resolve().parent / "results" / "train_step.json"),
    "Where to write the JSON results.")


def _cpu_flags() -> list[str]:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                return sorted(f for f in line.split(":", 1)[1].split()
                              if f.startswith(("amx", "avx512_bf16", "avx512f")))
    except OSError:
        pass
    return []


def _best_seconds(fn, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_peaks(size: int, threads: tuple[int, ...]) -> dict[str, float]:
    """GFLOP/s of one size x size matmul, best of 5, for each framework and dtype (torch: the
    best of its thread counts). JAX bfloat16 is measured both ways: bf16 -> bf16 (`jnp.dot`
    default, which XLA:CPU runs as a float32 GEMM) and bf16 -> float32 accumulation (what the
    model uses)."""
    import jax
    import jax.numpy as jnp
    import torch

    flop = 2 * size ** 3 / 1e9
    peaks = {}
    for name, dtype, preferred in (("jax_float32", jnp.float32, None),
                                   ("jax_bfloat16", jnp.bfloat16, jnp.float32),
                                   ("jax_bfloat16_to_bfloat16", jnp.bfloat16, None)):
        a = jnp.ones((size, size), dtype)
        dot = jax.jit(lambda x, y, p=preferred: jnp.dot(x, y, preferred_element_type=p))
        peaks[name] = flop / _best_seconds(lambda: dot(a, a).block_until_ready())
    for name, dtype in (("torch_float32", torch.float32), ("torch_bfloat16", torch.bfloat16)):
        a = torch.ones(size, size, dtype=dtype)
        for count in threads:
            torch.set_num_threads(count)
            peaks[name] = max(peaks.get(name, 0.0), flop / _best_seconds(lambda: a @ a))
    return {k: round(v, 1) for k, v in peaks.items()}


def _model_config(dtype: str):
    from cm3leon_jax.config import ModelConfig
    return ModelConfig(preset="cm3leon", vocab_size=_VOCAB.value, num_layers=_LAYERS.value,
                       d_model=_D_MODEL.value, num_heads=_HEADS.value,
                       max_seq_len=_SEQ_LEN.value, tie_embeddings=True, dtype=dtype,
                       remat="none", scan_layers=_SCAN.value,
                       zero_init_output_projections=False)


def jax_stepper(dtype: str, tokens):
    """A callable running one donated, jitted train step of the JAX model."""
    import functools

    import jax
    from cm3leon_jax.config import MeshConfig, TrainConfig
    from cm3leon_jax.parallel import mesh as mesh_lib
    from cm3leon_jax.parallel import sharding as sharding_lib
    from cm3leon_jax.train import decoder_task, optimizer, state as state_lib, step as step_lib

    mesh_config = MeshConfig(data=1, fsdp=1, tensor=1)
    mesh = mesh_lib.make_mesh(mesh_config, devices=jax.devices()[:1])
    rules = mesh_config.logical_axis_rules()
    model_cfg = _model_config(dtype)
    # The production step (train/step.py): AdamW as torch's below, no clipping, constant LR.
    train = TrainConfig(steps=1000, lr=1e-4, warmup_steps=0, decay="constant", b1=0.9, b2=0.95,
                        eps=1e-8, weight_decay=0.1, grad_clip=0.0)
    tx = optimizer.make_optimizer(train)
    state, shardings = state_lib.create_sharded_train_state(
        functools.partial(decoder_task.init_params, model_cfg),
        decoder_task.param_shardings(model_cfg, mesh, rules), tx, mesh, jax.random.key(0))
    jitted = step_lib.jit_train_step(decoder_task.make_loss_fn(model_cfg, (0, 0)), tx,
                                     optimizer.learning_rate(train), shardings,
                                     sharding_lib.batch_sharding(mesh, rules))
    step = sharding_lib.ShardedFunction(jitted, mesh, rules)
    batch = {"ids": tokens}
    holder = {"state": state}

    def run():
        holder["state"], metrics = step(holder["state"], batch)
        jax.block_until_ready(metrics)

    return run


def torch_stepper(dtype: str, tokens, threads: int, attention: str):
    """A callable running one train step of HF OPTForCausalLM of the same shape, at this
    thread count and attention implementation."""
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    model = OPTForCausalLM(OPTConfig(
        vocab_size=_VOCAB.value, hidden_size=_D_MODEL.value, num_hidden_layers=_LAYERS.value,
        ffn_dim=4 * _D_MODEL.value, num_attention_heads=_HEADS.value,
        max_position_embeddings=_SEQ_LEN.value, enable_bias=False,
        layer_norm_elementwise_affine=False, activation_function="gelu",
        do_layer_norm_before=True, word_embed_proj_dim=_D_MODEL.value, dropout=0.0,
        attention_dropout=0.0, tie_word_embeddings=True, attn_implementation=attention))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8,
                                  weight_decay=0.1)
    ids = torch.tensor(tokens, dtype=torch.long)
    use_bf16 = dtype == "bfloat16"

    def run():
        torch.set_num_threads(threads)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return run


def _summarize(times: list[tuple[float, float]], tokens: int, flops_per_token: int,
               bound: float) -> dict:
    walls = [t[0] for t in times]
    cpus = [t[1] for t in times]
    best = min(walls)
    return {
        "step_seconds": [round(w, 3) for w in walls],
        "cpu_seconds": [round(c, 3) for c in cpus],
        "tokens_per_s_best": round(tokens / best, 1),
        "tokens_per_s_median": round(tokens / statistics.median(walls), 1),
        "tokens_per_cpu_s": round(tokens / min(cpus), 1),
        "achieved_gflop_s_best": round(flops_per_token * tokens / best / 1e9, 1),
        "fraction_of_bound": round(tokens / best / bound, 3),
    }


def main(argv):
    del argv
    if _XLA_FLAGS.value:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _XLA_FLAGS.value)
    import numpy as np
    import torch

    from cm3leon_jax.models import accounting

    threads = reference.thread_counts(_TORCH_THREADS.value)
    load_before = os.getloadavg()
    peaks = matmul_peaks(_MATMUL.value, threads)
    print("matmul peaks (GFLOP/s):", peaks, flush=True)

    cfg = _model_config("float32")
    num_params = accounting.count_params(cfg)
    lookup = _SEQ_LEN.value * _D_MODEL.value  # the position table (tied token table is a matmul)
    flops = accounting.flops_per_token(cfg, num_params, lookup, _SEQ_LEN.value)["total"]
    tokens_per_step = _BATCH.value * _SEQ_LEN.value
    tokens = np.random.default_rng(0).integers(0, _VOCAB.value, (_BATCH.value, _SEQ_LEN.value),
                                               dtype=np.int32)
    results = {}
    for dtype in _DTYPES.value:
        # The machine's bound in this dtype: the fastest matmul either framework ran in it.
        bound = max(peaks[f"jax_{dtype}"], peaks[f"torch_{dtype}"]) * 1e9 / flops
        results[f"flop_bound_tokens_per_s_{dtype}"] = round(bound, 1)
        steppers, extra = {}, {}
        if "jax" in _FRAMEWORKS.value:
            start = time.perf_counter()
            steppers["jax"] = jax_stepper(dtype, tokens)
            steppers["jax"]()  # compiles
            extra["jax"] = {"first_step_with_compile_s": round(time.perf_counter() - start, 1)}
        if "torch" in _FRAMEWORKS.value:
            for name, count, attention in reference.settings(threads):
                steppers[f"torch_{name}"] = torch_stepper(dtype, tokens, count, attention)
        for _ in range(_WARMUP.value):
            for run in steppers.values():
                run()
        times = {name: [] for name in steppers}
        for _ in range(_STEPS.value):
            for name, run in steppers.items():
                wall, cpu = time.perf_counter(), time.process_time()
                run()
                times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
        summaries = {name: _summarize(times[name], tokens_per_step, flops, bound)
                     for name in steppers}
        for name, summary in summaries.items():
            summary.update(extra.get(name, {}))
            print(f"{name} {dtype}: {summary}", flush=True)
        if "jax" in summaries:
            results[f"jax_{dtype}"] = summaries.pop("jax")
        if summaries:
            setting, _ = reference.best({name.removeprefix("torch_"): summary["tokens_per_s_best"]
                                         for name, summary in summaries.items()})
            results[f"torch_{dtype}"] = {
                "best_setting": setting, **summaries[f"torch_{setting}"],
                "settings": {name.removeprefix("torch_"): summary
                             for name, summary in summaries.items()}}
        if {"jax", "torch"} <= set(_FRAMEWORKS.value):
            jax_r, torch_r = results[f"jax_{dtype}"], results[f"torch_{dtype}"]
            results[f"jax_over_torch_{dtype}"] = {
                "best_step": round(jax_r["tokens_per_s_best"] / torch_r["tokens_per_s_best"], 3),
                "median_step": round(jax_r["tokens_per_s_median"]
                                     / torch_r["tokens_per_s_median"], 3),
                "per_cpu_second": round(jax_r["tokens_per_cpu_s"] / torch_r["tokens_per_cpu_s"],
                                        3)}
            print(f"{dtype}: JAX {jax_r['tokens_per_s_best']} tokens/s "
                  f"({reference.percent(jax_r['tokens_per_s_best'], bound)}), torch "
                  f"{torch_r['tokens_per_s_best']} at {torch_r['best_setting']} "
                  f"({reference.percent(torch_r['tokens_per_s_best'], bound)}), FLOP bound "
                  f"{bound:.1f}; JAX / torch {results[f'jax_over_torch_{dtype}']}", flush=True)

    import jax
    import transformers
    report = {
        "command": " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:]),
        "shape": {"batch_size": _BATCH.value, "seq_len": _SEQ_LEN.value,
                  "d_model": _D_MODEL.value, "num_layers": _LAYERS.value,
                  "num_heads": _HEADS.value, "vocab_size": _VOCAB.value,
                  "tokens_per_step": tokens_per_step},
        "parameters": num_params,
        "flops_per_token": flops,
        "matmul_peak_gflop_s": peaks,
        "results": results,
        "machine": {"cpu": reference.cpu_model(), "cpu_count": os.cpu_count(),
                    "cpu_flags": _cpu_flags(),
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        "versions": {"jax": jax.__version__, "torch": torch.__version__,
                     "transformers": transformers.__version__},
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "jax_scan_layers": _SCAN.value,
    }
    output = pathlib.Path(_OUTPUT.value)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    app.run(main)
