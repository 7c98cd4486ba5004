"""The hand-written backward passes against JAX's autodiff, on this machine's backend.

    PYTHONPATH=. python benchmarks/backward_passes.py    # writes benchmarks/results/backward_passes.json

`config.model.backward` chooses between the model's custom VJPs and JAX's own differentiation of
the same forward functions (`cm3leon_jax/models/backward.py`); `auto` keeps the custom ones only
on the backend where this benchmark shows them faster. Two levels, each A/B interleaved (custom,
autodiff, custom, ...) so a change of machine load hits both alike, best and median of `--repeats`:

* each function alone, forward + backward (`jax.value_and_grad` of the sum of its output), at the
  shapes of `benchmarks/train_step.py`'s model (d_model 512, MLP 2,048, 8 heads, 4,096 tokens as
  8 x 512, vocabulary 8,192): the weight matmul (`matmul.matmul` vs `matmul_autodiff`, float32
  and bfloat16), the attention core (blockwise causal, as training runs it) and the loss's
  log-normaliser;
* the whole train step of that model (forward, backward, AdamW; float32 and bfloat16 compute)
  with `model.backward=custom` against `autodiff`, and with each part in turn left to autodiff
  (the rest custom): the slowdown is that part's own share of the gain, in the real step (a
  pass can lose alone yet win in the step, where it changes what XLA fuses and keeps).

And the memory of that step at a larger vocabulary (32,768, 4 x 2,048 tokens): the compiled
program's temporaries for each choice (compile only).

Ratios > 1 mean the hand-written pass is faster. The figures go into docs/BENCHMARKS.md
("Backward passes") and the docstrings of the functions.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import platform
import statistics
import sys
import time

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

_REPEATS = flags.DEFINE_integer("repeats", 7, "Timed calls per variant (after one warm-up).")
_STEP_REPEATS = flags.DEFINE_integer("step_repeats", 4, "Timed train steps per variant.")
_TOKENS = flags.DEFINE_integer("seq_len", 512, "Tokens per sequence.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Sequences.")
_D_MODEL = flags.DEFINE_integer("d_model", 512, "Model width.")
_HEADS = flags.DEFINE_integer("num_heads", 8, "Attention heads.")
_LAYERS = flags.DEFINE_integer("num_layers", 8, "Decoder layers (train step).")
_VOCAB = flags.DEFINE_integer("vocab_size", 8192, "Vocabulary size.")
_PARTS = ("matmul", "attention", "loss")  # models/backward.py PARTS
_OUTPUT = flags.DEFINE_string(
    "output", str(pathlib.Path(__file__).resolve().parent / "results" / "backward_passes.json"),
    "Where to write the JSON results.")


def _interleaved(variants: dict, repeats: int) -> dict:
    """{name: {best_ms, median_ms}} timing each callable in turn, `repeats` rounds."""
    for fn in variants.values():
        fn()  # compile and warm up
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: {"best_ms": 1e3 * min(t), "median_ms": 1e3 * statistics.median(t)}
            for name, t in times.items()}


def function_cases():
    import jax
    import jax.numpy as jnp

    from cm3leon_jax.models import attention, loss, matmul

    tokens = _BATCH.value * _TOKENS.value
    d, mlp, heads = _D_MODEL.value, 4 * _D_MODEL.value, _HEADS.value
    keys = iter(jax.random.split(jax.random.key(0), 16))
    normal = lambda shape, dtype=jnp.float32: jax.random.normal(next(keys), shape, dtype)

    def grad_of(fn, *args):
        step = jax.jit(jax.value_and_grad(lambda *a: jnp.sum(fn(*a).astype(jnp.float32)),
                                          argnums=tuple(range(len(args)))))
        return lambda: jax.block_until_ready(step(*args))

    cases = {}
    for dtype_name, dtype in (("float32", jnp.float32), ("bfloat16", jnp.bfloat16)):
        x, w = normal((tokens, d), dtype), normal((d, mlp), dtype) * 0.05
        cases[f"matmul {dtype_name} [{tokens}x{d}] x [{d}x{mlp}]"] = {
            "custom": grad_of(lambda a, b: matmul.matmul(a, b), x, w),
            "autodiff": grad_of(lambda a, b: matmul.matmul_autodiff(a, b), x, w)}
    head_dim = d // heads
    q, k, v = (normal((_BATCH.value, _TOKENS.value, heads, head_dim)) for _ in range(3))
    segments = jnp.ones((_BATCH.value, _TOKENS.value), jnp.int32)
    attend = lambda custom: lambda a, b, c: attention.attention(
        a, b, c, query_segment_ids=segments, key_segment_ids=segments, implementation="xla",
        custom_backward=custom)
    cases[f"attention float32 {_BATCH.value}x{_TOKENS.value}, {heads} heads of {head_dim}"] = {
        "custom": grad_of(attend(True), q, k, v), "autodiff": grad_of(attend(False), q, k, v)}
    logits = normal((tokens, _VOCAB.value))
    targets = jax.random.randint(next(keys), (tokens,), 0, _VOCAB.value)
    log_z = lambda fn: lambda a: sum(fn(a, targets))
    cases[f"loss log-normaliser float32 [{tokens}x{_VOCAB.value}]"] = {
        "custom": grad_of(log_z(loss.log_z_and_target_logit), logits),
        "autodiff": grad_of(log_z(loss.log_z_and_target_logit_autodiff), logits)}
    return cases


def train_step_cases():
    import jax

    from cm3leon_jax.config import MeshConfig, ModelConfig, TrainConfig
    from cm3leon_jax.parallel import mesh as mesh_lib, sharding as sharding_lib
    from cm3leon_jax.train import decoder_task, optimizer, state as state_lib, step as step_lib

    mesh_config = MeshConfig(data=1, fsdp=1, tensor=1)
    mesh = mesh_lib.make_mesh(mesh_config, devices=jax.devices()[:1])
    rules = mesh_config.logical_axis_rules()
    train = TrainConfig(steps=1000, lr=1e-4, warmup_steps=0, decay="constant", grad_clip=1.0)
    tx = optimizer.make_optimizer(train)
    ids = jax.random.randint(jax.random.key(1), (_BATCH.value, _TOKENS.value), 0, _VOCAB.value)
    batch = {"ids": ids}
    cases = {}
    from cm3leon_jax.models import backward as backward_lib

    choices = ["custom", "autodiff"] + [
        "+".join(p for p in backward_lib.PARTS if p != part) for part in backward_lib.PARTS]
    for dtype in ("float32", "bfloat16"):
        variants = {}
        for backward in choices:
            model = ModelConfig(preset="cm3leon", vocab_size=_VOCAB.value,
                                num_layers=_LAYERS.value, d_model=_D_MODEL.value,
                                num_heads=_HEADS.value, max_seq_len=_TOKENS.value,
                                dtype=dtype, scan_layers=False, backward=backward,
                                zero_init_output_projections=False)
            state, shardings = state_lib.create_sharded_train_state(
                functools.partial(decoder_task.init_params, model),
                decoder_task.param_shardings(model, mesh, rules), tx, mesh, jax.random.key(0))
            step = step_lib.jit_train_step(
                decoder_task.make_loss_fn(model, (0, 0)), tx, optimizer.learning_rate(train),
                shardings, sharding_lib.batch_sharding(mesh, rules))
            holder = {"state": state}

            def run(step=step, holder=holder):
                with sharding_lib.sharding_context(mesh, rules):
                    holder["state"], metrics = step(holder["state"], batch)
                jax.block_until_ready(metrics)

            variants[backward] = run
        cases[f"train step {dtype}, d_model {_D_MODEL.value}, {_LAYERS.value} layers, "
              f"{_BATCH.value}x{_TOKENS.value} tokens"] = variants
    return cases


def step_memory() -> dict[str, float]:
    """Temporaries (MB) of the compiled train step, all parts hand-written, none, and each part in
    turn by autodiff: d_model 512, 4 layers, vocabulary 32,768, 4 x 2,048 tokens (compile only,
    nothing runs: XLA's own buffer assignment, `memory_analysis`)."""
    import functools

    import jax
    import jax.numpy as jnp

    from cm3leon_jax.config import MeshConfig, ModelConfig, TrainConfig
    from cm3leon_jax.parallel import mesh as mesh_lib, sharding as sharding_lib
    from cm3leon_jax.train import decoder_task, optimizer, state as state_lib, step as step_lib

    mesh_config = MeshConfig(data=1, fsdp=1, tensor=1)
    mesh = mesh_lib.make_mesh(mesh_config, devices=jax.devices()[:1])
    rules = mesh_config.logical_axis_rules()
    train = TrainConfig(steps=10, lr=1e-4, warmup_steps=0, decay="constant")
    tx = optimizer.make_optimizer(train)
    batch_sharding = sharding_lib.batch_sharding(mesh, rules)
    choices = ["custom", "autodiff"] + ["+".join(p for p in _PARTS if p != part) for part in _PARTS]
    out = {}
    for backward in choices:
        model = ModelConfig(preset="cm3leon", vocab_size=32768, num_layers=4, d_model=512,
                            num_heads=8, max_seq_len=2048, scan_layers=False, backward=backward)
        abstract, shardings = state_lib.abstract_train_state(
            functools.partial(decoder_task.init_params, model),
            decoder_task.param_shardings(model, mesh, rules), tx, mesh, jax.random.key(0))
        step = step_lib.jit_train_step(decoder_task.make_loss_fn(model, (0, 0)), tx,
                                       optimizer.learning_rate(train), shardings, batch_sharding)
        batch = {"ids": jax.ShapeDtypeStruct((4, 2048), jnp.int32, sharding=batch_sharding)}
        with sharding_lib.sharding_context(mesh, rules):
            analysis = step.lower(abstract, batch).compile().memory_analysis()
        out[backward] = analysis.temp_size_in_bytes / 1e6
        print(f"[backward_passes] step temporaries, backward={backward}: {out[backward]:,.0f} MB")
    return out


def main(argv):
    del argv
    import jax

    results = {"backend": jax.default_backend(), "jax": jax.__version__,
               "machine": {"cpu": platform.processor() or platform.machine(),
                           "cores": os.cpu_count()}, "cases": {}}
    for cases, repeats in ((function_cases(), _REPEATS.value),
                           (train_step_cases(), _STEP_REPEATS.value)):
        for name, variants in cases.items():
            timing = _interleaved(variants, repeats)
            ratio = timing["autodiff"]["median_ms"] / timing["custom"]["median_ms"]
            results["cases"][name] = dict(timing, custom_speedup_median=ratio,
                                          custom_speedup_best=timing["autodiff"]["best_ms"]
                                          / timing["custom"]["best_ms"])
            print(f"[backward_passes] {name}: custom {timing['custom']['median_ms']:.1f} ms, "
                  f"autodiff {timing['autodiff']['median_ms']:.1f} ms (median): custom "
                  f"{ratio:.2f}x")
            for variant in timing:
                if "+" in variant:  # every part custom but one: that part's share of the gain
                    left_out = next(p for p in _PARTS if p not in variant.split("+"))
                    share = timing[variant]["median_ms"] / timing["custom"]["median_ms"]
                    results["cases"][name][f"without custom {left_out}: slowdown"] = share
                    print(f"[backward_passes]   {left_out} by autodiff, the rest custom: "
                          f"{timing[variant]['median_ms']:.1f} ms ({share:.2f}x all-custom)")
    results["step_temporaries_mb"] = step_memory()
    output = pathlib.Path(_OUTPUT.value)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=1))
    print(f"[backward_passes] wrote {output}")


if __name__ == "__main__":
    app.run(main)
