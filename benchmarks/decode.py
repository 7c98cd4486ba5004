"""Decoding speed: generated tokens/s of our jit-compiled decoder vs Hugging Face torch `generate`.

    PYTHONPATH=. python benchmarks/decode.py            # -> benchmarks/results/decode.json

For each model shape (`tiny`: d=64, 2 layers, 4 heads, vocab 1,024; `cm3leon`: d=512, 8 layers,
8 heads, vocab 8,192, the cm3leon preset) and batch (1, 16), on CPU, float32:

* ours: `cm3leon_jax.generation.decode.decode` (prefill + `lax.while_loop`, one token per step,
  top-p 0.9 sampling at temperature 1, no stop token so every row writes exactly N tokens):
  `Decoder(cfg).apply(..., cache=...)` with `models/kv_cache.py`'s per-layer cache, the weights
  unstacked once beforehand (`kv_cache.unstack_layers`, as `Generator` holds them);
* torch: `transformers.OPTForCausalLM` (`enable_bias=False`, `layer_norm_elementwise_affine=False`,
  the CM3leon preset's architecture) holding *the same weights* (our params mapped onto OPT's state
  dict; OPT's learned positions have an offset of 2, so our row p is its row p + 2; the script
  checks the two models' logits agree before timing), `generate(do_sample=True, top_p=0.9,
  top_k=0)` with its KV cache, at every setting that can be its fastest (`benchmarks/reference.py`):
  intra-op threads (`--torch_threads`, default 1,2) x attention (`eager`, `sdpa`); every
  setting's figure is kept and ours is divided by the best;
* bfloat16 (the cm3leon shape): the same weights rounded to bfloat16 on both sides (our
  `dtype=param_dtype=bfloat16`: bfloat16 matmuls accumulating in float32, the KV cache in
  float32 on CPU (`kv_cache.cache_dtype`); torch's model `.to(torch.bfloat16)`, timed at the
  same settings): half the weight bytes per step (bfloat16 matmul instructions: AMX on Intel, avx512_bf16 on
  the AMD EPYC of docs/BENCHMARKS.md's figures);
* the memory-bandwidth bound: a decode step must read every weight once (shared by the batch)
  plus each row's keys and values; with the machine's read bandwidth measured here (jitted and
  numpy sums over a 256 MiB float32 array, best of several), tokens/s <= batch * bandwidth / bytes
  per step; both sides are reported as a fraction of it.

Each figure is the best of a few timed runs after a warm-up run (compilation excluded), ours and
torch's interleaved so both see the same machine load; the 1-minute load average before and after
is recorded because this workplace's CPU is shared. Rates are given per wall-clock second and per
CPU second of the process (all threads): on a machine shared with other jobs the second counts the
work each implementation does, the first also how it copes with losing its cores. Timings include
the prompt's prefill, as `generate`'s do. Prompt: 16 random tokens per row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
import reference

from cm3leon_jax.config import ModelConfig
from cm3leon_jax.generation import constraints, decode
from cm3leon_jax.generation.sampling import SamplingConfig
from cm3leon_jax.models.kv_cache import cache_dtype, unstack_layers
from cm3leon_jax.models.decoder import Decoder, init_params

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "decode.json")
PROMPT_LEN = 16
TOP_P = 0.9

SHAPES = {
    "tiny": dict(vocab_size=1024, num_layers=2, d_model=64, num_heads=4),
    "cm3leon": dict(vocab_size=8192, num_layers=8, d_model=512, num_heads=8),
}


def model_config(shape: str, max_seq_len: int, dtype: str = "float32") -> ModelConfig:
    # Random weights with the output projections *not* zeroed (the CM3leon init would make every
    # block the identity at step 0, which is not what a trained model computes).
    return ModelConfig(preset="cm3leon", max_seq_len=max_seq_len, dtype=dtype, param_dtype=dtype,
                       zero_init_output_projections=False, init_std=0.02, **SHAPES[shape])


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


# --------------------------------------------------------------------------- bandwidth -----

def measure_read_bandwidth(mebibytes: int = 256, repeats: int = 9) -> float:
    """Bytes/s of reading a large float32 array once, best of `repeats` of a jitted sum and of
    numpy's sum (whichever reads faster on this machine: the bound should be the machine's)."""
    host = np.ones((mebibytes * 2**20 // 4,), np.float32)
    array = jnp.asarray(host)
    total = jax.jit(jnp.sum)
    total(array).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        total(array).block_until_ready()
        best = min(best, time.perf_counter() - start)
        start = time.perf_counter()
        host.sum()
        best = min(best, time.perf_counter() - start)
    return host.nbytes / best


def bytes_per_step(cfg: ModelConfig, params, batch: int, new_tokens: int) -> float:
    """Weights read once per step (the position table only one row per token) plus the keys
    and values in use, averaged over the generation, in the config's storage dtype."""
    itemsize = jnp.dtype(cfg.param_dtype).itemsize
    weights = sum(leaf.size for leaf in jax.tree.leaves(params)) * itemsize
    weights -= params["embed_positions"]["embedding"].size * itemsize
    mean_slots = PROMPT_LEN + (new_tokens + 1) / 2
    kv = (2 * cfg.num_layers * batch * mean_slots * cfg.kv_heads * cfg.resolved_head_dim
          * jnp.dtype(cache_dtype(cfg)).itemsize)
    return float(weights + kv)


# ------------------------------------------------------------------------------- ours -----

def ours_runner(cfg: ModelConfig, params, prompts: np.ndarray, new_tokens: int):
    allowed = constraints.unconstrained(cfg.vocab_size)
    settings = SamplingConfig(temperature=1.0, top_p=TOP_P)
    # Per-layer weights once, as `Generator` holds them (torch's model has them that way too);
    # otherwise every call would first copy the scanned stack.
    params, cfg = unstack_layers(params, cfg)

    def run(seed: int) -> np.ndarray:
        out = decode.decode(params, cfg, list(prompts), max_new_tokens=new_tokens,
                            constraints=allowed, sampling=settings, seed=seed,
                            batch_size=len(prompts))
        assert out.tokens.shape == (len(prompts), new_tokens)
        return out.tokens

    return run


# ------------------------------------------------------------------------------ torch -----

def opt_model(cfg: ModelConfig, params):
    """`OPTForCausalLM` with our weights (see the module docstring for the mapping)."""
    import torch  # noqa: PLC0415
    from transformers import OPTConfig, OPTForCausalLM  # noqa: PLC0415

    d = cfg.d_model
    config = OPTConfig(vocab_size=cfg.vocab_size, hidden_size=d, num_hidden_layers=cfg.num_layers,
                       ffn_dim=cfg.hidden_dim, num_attention_heads=cfg.num_heads,
                       max_position_embeddings=cfg.max_seq_len, do_layer_norm_before=True,
                       word_embed_proj_dim=d, enable_bias=False,
                       layer_norm_elementwise_affine=False, activation_function="gelu",
                       dropout=0.0, attention_dropout=0.0, pad_token_id=0, bos_token_id=1,
                       eos_token_id=2, tie_word_embeddings=True)
    model = OPTForCausalLM(config).eval()

    def t(array):
        return torch.from_numpy(np.array(array, np.float32, copy=True))

    positions = np.zeros((cfg.max_seq_len + 2, d), np.float32)
    positions[2:] = np.asarray(params["embed_positions"]["embedding"])
    state = {"model.decoder.embed_tokens.weight": t(params["embed_tokens"]["embedding"]),
             "model.decoder.embed_positions.weight": t(positions)}
    stacked = params["layers"]
    for i in range(cfg.num_layers):
        attention = {k: np.asarray(v["kernel"][i]) for k, v in stacked["attention"].items()}
        prefix = f"model.decoder.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj"):
            state[prefix + f"self_attn.{name}.weight"] = t(attention[name].reshape(d, d).T)
        state[prefix + "self_attn.out_proj.weight"] = t(attention["o_proj"].reshape(d, d).T)
        state[prefix + "fc1.weight"] = t(np.asarray(stacked["mlp"]["fc1"]["kernel"][i]).T)
        state[prefix + "fc2.weight"] = t(np.asarray(stacked["mlp"]["fc2"]["kernel"][i]).T)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if m != "lm_head.weight"]  # tied to embed_tokens
    if missing or unexpected:
        raise RuntimeError(f"OPT state dict mismatch: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    return model


def check_same_model(cfg: ModelConfig, params, model, prompts: np.ndarray) -> float:
    """Max |logit difference| between our Decoder and the OPT copy on the prompts."""
    import torch  # noqa: PLC0415

    ours = np.asarray(jax.jit(lambda t: Decoder(cfg).apply({"params": params}, t))(prompts))
    with torch.inference_mode():
        theirs = model(torch.from_numpy(prompts.astype(np.int64))).logits.numpy()
    return float(np.max(np.abs(ours - theirs)))


def torch_runner(model, prompts: np.ndarray, new_tokens: int, threads: int, attention: str):
    import torch  # noqa: PLC0415

    ids = torch.from_numpy(prompts.astype(np.int64))
    mask = torch.ones_like(ids)

    def run(seed: int) -> np.ndarray:
        torch.set_num_threads(threads)
        model.set_attn_implementation(attention)
        torch.manual_seed(seed)
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=mask, do_sample=True, top_p=TOP_P, top_k=0,
                                 temperature=1.0, max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, eos_token_id=None, pad_token_id=0,
                                 use_cache=True)
        assert out.shape == (len(prompts), PROMPT_LEN + new_tokens)
        return out.numpy()

    return run


# ---------------------------------------------------------------------------- driver -----

def cpu_seconds() -> float:
    """User + system CPU time of this process, all its threads (XLA's and torch's pools)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(runners: dict, tokens: int, repeats: int) -> tuple[dict, dict]:
    """(best tokens per wall second, best tokens per CPU second) of each runner; runners take
    turns so they share the machine's load. CPU time is the steadier figure on a shared machine:
    it counts the work done, not the time other jobs held the cores."""
    for run in runners.values():
        run(0)  # warm-up: compilation (ours), first-call allocation (torch)
    wall = {name: float("inf") for name in runners}
    cpu = {name: float("inf") for name in runners}
    for repeat in range(repeats):
        for name, run in runners.items():
            start, start_cpu = time.perf_counter(), cpu_seconds()
            run(repeat + 1)
            wall[name] = min(wall[name], time.perf_counter() - start)
            cpu[name] = min(cpu[name], cpu_seconds() - start_cpu)
    return ({name: round(tokens / seconds, 1) for name, seconds in wall.items()},
            {name: round(tokens / seconds, 1) for name, seconds in cpu.items()})


def bench_shape(shape: str, new_tokens: int, batches: tuple[int, ...], repeats: int,
                bandwidth: float, torch_threads: tuple[int, ...],
                with_bfloat16: bool) -> dict:
    import torch  # noqa: PLC0415

    cfg = model_config(shape, max_seq_len=max(128, PROMPT_LEN + new_tokens))
    params = jax.tree.map(jnp.asarray, init_params(cfg, jax.random.key(0)))
    model = opt_model(cfg, params)
    sides = {"float32": (cfg, params, model)}
    if with_bfloat16:  # the same weights rounded to bfloat16, on both sides
        sides["bfloat16"] = (model_config(shape, cfg.max_seq_len, dtype="bfloat16"),
                             jax.tree.map(lambda leaf: leaf.astype(jnp.bfloat16), params),
                             opt_model(cfg, params).to(torch.bfloat16))
    rng = np.random.default_rng(0)
    check = rng.integers(3, cfg.vocab_size, size=(2, PROMPT_LEN)).astype(np.int32)
    figures = {"config": {k: getattr(cfg, k) for k in ("vocab_size", "num_layers", "d_model",
                                                        "num_heads", "hidden_dim")},
               "parameters": int(sum(leaf.size for leaf in jax.tree.leaves(params))),
               "max_abs_logit_difference_vs_opt": check_same_model(cfg, params, model, check),
               "new_tokens": new_tokens, "prompt_tokens": PROMPT_LEN, "batches": {}}
    for batch in batches:
        prompts = rng.integers(3, cfg.vocab_size, size=(batch, PROMPT_LEN)).astype(np.int32)
        runners = {}
        for dtype, (config, weights, opt) in sides.items():
            runners[f"ours_{dtype}"] = ours_runner(config, weights, prompts, new_tokens)
            for name, threads, attention in reference.settings(torch_threads):
                runners[f"torch_{dtype}_{name}"] = torch_runner(opt, prompts, new_tokens,
                                                                threads, attention)
        load_before = load_average()
        rates, cpu_rates = timed(runners, batch * new_tokens, repeats)
        figures["batches"][str(batch)] = entry = {
            "tokens_per_second": rates, "tokens_per_cpu_second": cpu_rates,
            "load_average_1min": [load_before, load_average()]}
        for dtype, (config, weights, _) in sides.items():
            ours, prefix = f"ours_{dtype}", f"torch_{dtype}_"
            setting, torch_best = reference.best({name[len(prefix):]: rate
                                                  for name, rate in rates.items()
                                                  if name.startswith(prefix)})
            step_bytes = bytes_per_step(config, weights, batch, new_tokens)
            bound = batch * bandwidth / step_bytes
            entry[dtype] = {
                "ours": rates[ours], "torch_best": torch_best, "torch_best_setting": setting,
                "ours_over_torch": round(rates[ours] / torch_best, 2),
                "ours_over_torch_cpu_time": round(
                    cpu_rates[ours] / cpu_rates[prefix + setting], 2),
                "bandwidth_bound_tokens_per_second": round(bound, 1),
                "bytes_per_step": step_bytes,
                "ours_fraction_of_bound": round(rates[ours] / bound, 3),
                "torch_fraction_of_bound": round(torch_best / bound, 3)}
            print(f"{shape} batch {batch} {dtype}: ours {rates[ours]} tokens/s "
                  f"({reference.percent(rates[ours], bound)}), torch {torch_best} at {setting} "
                  f"({reference.percent(torch_best, bound)}), bandwidth bound {bound:.1f}; "
                  f"ours / torch {rates[ours] / torch_best:.2f}x", flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default="tiny,cm3leon")
    parser.add_argument("--tiny_tokens", type=int, default=128)
    parser.add_argument("--cm3leon_tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--torch_threads", default=reference.TORCH_THREADS,
                        help=reference.THREADS_HELP)
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args()
    import torch  # noqa: PLC0415
    import transformers  # noqa: PLC0415

    started = time.time()
    bandwidth = measure_read_bandwidth()
    threads = reference.thread_counts(args.torch_threads)
    results = {"command": "PYTHONPATH=. python benchmarks/decode.py "
                          + " ".join(f"--{k}={v}" for k, v in vars(args).items() if k != "out"),
               "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                           "cpu": reference.cpu_model(),
                           "load_average_1min_at_start": load_average()},
               "versions": {"jax": jax.__version__, "torch": torch.__version__,
                            "transformers": transformers.__version__},
               "sampling": {"temperature": 1.0, "top_p": TOP_P},
               "read_bandwidth_gb_per_s": round(bandwidth / 1e9, 2), "shapes": {}}
    print(f"read bandwidth {bandwidth / 1e9:.1f} GB/s", flush=True)
    for shape in args.shapes.split(","):
        tokens = args.tiny_tokens if shape == "tiny" else args.cm3leon_tokens
        results["shapes"][shape] = bench_shape(shape, tokens, (1, 16), args.repeats, bandwidth,
                                               torch_threads=threads,
                                               with_bfloat16=shape == "cm3leon")
    results["machine"]["load_average_1min_at_end"] = load_average()
    results["wall_seconds"] = round(time.time() - started, 1)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as file:
        json.dump(results, file, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
