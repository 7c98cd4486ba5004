"""Attention implementations on CPU: parity of the Pallas splash kernel (interpret mode) and the
compile-time memory of `xla` vs `splash`.

    PYTHONPATH=. python benchmarks/attention.py

No TPU or GPU here: the splash kernel runs in Pallas interpret mode, which tiles exactly as the
TPU kernel does, so `jit(...).lower(...).compile().memory_analysis()` on CPU shows what the tiling
saves (nothing is allocated: compile-only). Figures, each against the reference in the same run:

* parity (float32): splash vs `jax.nn.dot_product_attention` (causal, 2 heads x 256 x 64), and
  splash vs the `xla` reference with packed documents (segment ids) and grouped-query attention,
  forward and the three input gradients (max abs difference).
* attention alone: temporary bytes of the gradient of causal attention, 4 heads x 2,048 x 128.
* the CM3leon-350M preset (experiments/cm3leon_350m.py: 24 layers, d_model 1024, 16 heads of 64,
  bfloat16 compute, remat=full, scanned layers) at 4,096 tokens, batch 1, `model.attention=xla`
  vs `=splash`: temporary bytes of one block's forward + backward (the body of the step's layer
  scan, where attention's buffers live), and of the whole train step's loss and gradients (the
  AdamW update adds the same bytes to both). The step's peak is set by the output head (float32
  logits over the 65,536-token vocabulary and their gradient, 1 GiB each at 4,096 tokens), which
  XLA's buffer assignment reuses for the attention's score buffers, so there the choice hardly
  shows at batch 1.

Writes benchmarks/results/attention.json (both figures and their ratio).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import platform
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from cm3leon_jax.config import model_config  # noqa: E402
from cm3leon_jax.models import Decoder  # noqa: E402
from cm3leon_jax.models.decoder import Block, BlockInputs  # noqa: E402
from cm3leon_jax.models import attention as attention_lib  # noqa: E402
from cm3leon_jax.models import loss as loss_lib  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent
OUT = REPO / "benchmarks" / "results" / "attention.json"


def _max_diff(a, b) -> float:
    return float(jnp.max(jnp.abs(jnp.asarray(a, jnp.float32) - jnp.asarray(b, jnp.float32))))


def _attention_fn(implementation):
    def fn(q, k, v, segments):
        return attention_lib.attention(q, k, v, query_segment_ids=segments,
                                       key_segment_ids=segments, implementation=implementation)
    return fn


def parity() -> dict:
    keys = jax.random.split(jax.random.key(0), 4)
    # causal, 2 heads x 256 x 64 against jax.nn
    q, k, v = (jax.random.normal(key, (1, 256, 2, 64)) for key in keys[:3])
    ones = jnp.ones((1, 256), jnp.int32)
    splash = jax.jit(_attention_fn("splash"))(q, k, v, ones)
    want = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    result = {"causal_2x256x64_vs_jax_nn": _max_diff(splash, want)}

    # packed documents + GQA (4 query heads over 2 kv heads), forward and gradients vs xla
    q = jax.random.normal(keys[0], (2, 256, 4, 64))
    k, v = (jax.random.normal(key, (2, 256, 2, 64)) for key in keys[1:3])
    cotangent = jax.random.normal(keys[3], q.shape)
    segments = np.ones((2, 256), np.int32)
    segments[:, 90:] = 2
    segments[:, 200:] = 3
    segments[1, 240:] = 0  # padding
    segments = jnp.asarray(segments)

    def loss(implementation, q, k, v):
        out = _attention_fn(implementation)(q, k, v, segments)
        return jnp.sum(out * cotangent), out

    outs = {}
    for implementation in ("xla", "splash"):
        grad_fn = jax.jit(jax.value_and_grad(functools.partial(loss, implementation),
                                             argnums=(0, 1, 2), has_aux=True))
        (_, out), grads = grad_fn(q, k, v)
        outs[implementation] = (out, grads)
    (out_x, grads_x), (out_s, grads_s) = outs["xla"], outs["splash"]
    result["segments_gqa_4q_2kv_256x64_vs_xla"] = {
        "forward": _max_diff(out_s, out_x),
        **{f"grad_{name}": _max_diff(a, b) for name, a, b in zip("qkv", grads_s, grads_x)}}
    return result


def temp_bytes(compiled) -> dict:
    analysis = compiled.memory_analysis()
    return {"temp_bytes": int(analysis.temp_size_in_bytes),
            "argument_bytes": int(analysis.argument_size_in_bytes),
            "output_bytes": int(analysis.output_size_in_bytes)}


def compare(measure) -> dict:
    result = {}
    for implementation in ("xla", "splash"):
        start = time.perf_counter()
        result[implementation] = measure(implementation)
        result[implementation]["compile_seconds"] = round(time.perf_counter() - start, 1)
        print(implementation, result[implementation], flush=True)
    result["temp_ratio_xla_over_splash"] = round(
        result["xla"]["temp_bytes"] / result["splash"]["temp_bytes"], 2)
    return result


def attention_gradient_memory(heads=4, length=2048, head_dim=128) -> dict:
    q = jax.ShapeDtypeStruct((1, length, heads, head_dim), jnp.float32)
    segments = jax.ShapeDtypeStruct((1, length), jnp.int32)

    def measure(implementation):
        fn = _attention_fn(implementation)
        grad = jax.grad(lambda q, k, v, s: jnp.sum(fn(q, k, v, s)), argnums=(0, 1, 2))
        return temp_bytes(jax.jit(grad).lower(q, q, q, segments).compile())

    return {"shape": {"heads": heads, "length": length, "head_dim": head_dim,
                      "dtype": "float32"}, **compare(measure)}


def _preset_350m():
    sys.path.insert(0, str(REPO / "experiments"))
    import cm3leon_350m  # noqa: PLC0415
    return model_config(cm3leon_350m.get_config())


def block_memory(seq_len=4096, batch=1) -> dict:
    """One transformer block of the 350M preset (the body of the train step's layer scan):
    forward + backward w.r.t. its weights and input."""
    base = _preset_350m()
    x = jax.ShapeDtypeStruct((batch, seq_len, base.d_model), jnp.bfloat16)
    segments = jax.ShapeDtypeStruct((batch, seq_len), jnp.int32)

    def measure(implementation):
        cfg = dataclasses.replace(base, attention=implementation, remat="none")
        block = Block(cfg)

        def inputs(segments):
            return BlockInputs(segment_ids=segments, key_segment_ids=segments,
                               query_slots=jnp.arange(seq_len), rope_cos=None, rope_sin=None,
                               cache_index=None)

        params = jax.eval_shape(lambda x, s: nn.meta.unbox(
            block.init(jax.random.key(0), x, inputs(s), None)["params"]), x, segments)

        def loss(params, x, segments):
            out = block.apply({"params": params}, x, inputs(segments), None)[0]
            return jnp.sum(out.astype(jnp.float32))

        grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
        return temp_bytes(grad.lower(params, x, segments).compile())

    return {"config": "experiments/cm3leon_350m.py, one block", "seq_len": seq_len,
            "batch_size": batch, "what": "jit(grad) of one Block (weights and input)",
            **compare(measure)}


def train_step_memory(seq_len=4096, batch=1) -> dict:
    base = _preset_350m()
    tokens = jax.ShapeDtypeStruct((batch, seq_len), jnp.int32)

    def measure(implementation):
        cfg = dataclasses.replace(base, attention=implementation)
        model = Decoder(cfg)
        params = jax.eval_shape(lambda t: nn.meta.unbox(
            model.init(jax.random.key(0), t[:, :1])["params"]), tokens)

        def loss(params, tokens, segments):
            logits = model.apply({"params": params}, tokens, segments)
            targets, weights = loss_lib.next_token_targets(tokens, segments)
            sums = loss_lib.cross_entropy_sums(logits, targets, weights, cfg.z_loss)
            return sums.cross_entropy / jnp.maximum(jnp.sum(weights), 1.0)

        step = jax.jit(jax.value_and_grad(loss))
        return temp_bytes(step.lower(params, tokens, tokens).compile())

    return {"config": "experiments/cm3leon_350m.py", "seq_len": seq_len, "batch_size": batch,
            "what": "jit(value_and_grad(loss)) of the 350M decoder, compile-only memory_analysis",
            **compare(measure)}


def main() -> None:
    result = {"command": "benchmarks/attention.py", "backend": jax.default_backend(),
              "jax": jax.__version__, "machine": platform.processor() or platform.machine(),
              "note": "splash runs in Pallas interpret mode on CPU (same tiling as the TPU "
                      "kernel); memory figures are XLA's compile-time temporaries"}
    start = time.perf_counter()
    result["parity_max_abs_diff_float32"] = parity()
    print(result["parity_max_abs_diff_float32"], flush=True)
    result["attention_gradient"] = attention_gradient_memory()
    result["block_350m"] = block_memory()
    result["train_step_350m"] = train_step_memory()
    result["seconds"] = round(time.perf_counter() - start, 1)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
