"""The first accelerator's figures in one command: train-step MFU per attention kernel, decoding
tokens/s at batch 1 and 16, and Hugging Face torch on the same model in the same run.

    PYTHONPATH=. python benchmarks/accelerator.py              # on a GPU or TPU machine
    PYTHONPATH=. python benchmarks/accelerator.py --dry_run    # tiny shapes on CPU (tests do it)

Model: `experiments/cm3leon_350m.py`'s (cm3leon preset, 24 layers, d_model 1024, 16 heads,
vocabulary 65,536, bfloat16 compute with float32 weights, full remat), at `--seq_len` tokens per
row and `--batch_size` rows, on a data-parallel mesh of every local device. For each attention
implementation this backend runs (GPU: xla, cudnn; TPU: xla, splash; CPU: xla, splash in Pallas
interpret mode) the training loop's own jitted step (loss, gradients, AdamW, donated state) is
timed after `--warmup` steps: tokens/s and MFU against the device's dense bfloat16 peak
(`train/throughput.py`'s table; a measured matmul on CPU). Decoding: `generation.decode.decode`
(prefill + KV-cache loop, top-p 0.9) writing `--new_tokens` tokens per row at batch 1 and 16.

Reference, same run, same shapes (`--torch`, on by default): Hugging Face `OPTForCausalLM` with
`enable_bias=False` and `layer_norm_elementwise_affine=False` (the cm3leon preset's
architecture) on the same device kind, bfloat16 autocast, AdamW: train tokens/s and `generate`
tokens/s at the same batches, each at the setting that makes it fastest here
(`benchmarks/reference.py`: attention `eager` and `sdpa`, x `--torch_threads` on CPU; every
setting is timed and kept, the best divides ours).

Writes benchmarks/results/accelerator.json (or `--out`) and prints a markdown table for
docs/BENCHMARKS.md ("Accelerator").
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import pathlib
import platform as host_platform
import time

import numpy as np
import reference

REPO = pathlib.Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "accelerator.json"
ATTENTION_BY_BACKEND = {"gpu": ("xla", "cudnn"), "tpu": ("xla", "splash"), "cpu": ("xla", "splash")}
DRY_RUN_MODEL = dict(num_layers=2, d_model=128, num_heads=2, vocab_size=512, max_seq_len=256)


def model_config(dry_run: bool, seq_len: int):
    from cm3leon_jax import config as config_lib  # noqa: PLC0415

    spec = importlib.util.spec_from_file_location("c", REPO / "experiments" / "cm3leon_350m.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config()
    cfg.model.max_seq_len = max(cfg.model.max_seq_len, seq_len)
    if dry_run:
        cfg.model.update(DRY_RUN_MODEL, dtype="float32", remat="none")
    return config_lib.model_config(cfg)


def _best(timings: list[float]) -> float:
    return min(timings) if timings else float("nan")


def time_train_step(model, batch_size: int, seq_len: int, steps: int, warmup: int) -> dict:
    import jax  # noqa: PLC0415

    from cm3leon_jax.models import accounting  # noqa: PLC0415
    from cm3leon_jax.config import MeshConfig, TrainConfig  # noqa: PLC0415
    from cm3leon_jax.parallel import mesh as mesh_lib, sharding  # noqa: PLC0415
    from cm3leon_jax.train import decoder_task, optimizer, state as state_lib  # noqa: PLC0415
    from cm3leon_jax.train import step as step_lib, throughput  # noqa: PLC0415

    mesh_config = MeshConfig(data=-1, fsdp=1, tensor=1)
    mesh = mesh_lib.make_mesh(mesh_config)
    rules = mesh_config.logical_axis_rules()
    train = TrainConfig(steps=1000, lr=1e-4, warmup_steps=0, decay="constant", grad_clip=1.0)
    tx = optimizer.make_optimizer(train)
    state, shardings = state_lib.create_sharded_train_state(
        functools.partial(decoder_task.init_params, model),
        decoder_task.param_shardings(model, mesh, rules), tx, mesh, jax.random.key(0))
    batch_sharding = sharding.batch_sharding(mesh, rules)
    step = sharding.ShardedFunction(step_lib.jit_train_step(
        decoder_task.make_loss_fn(model, (model.vocab_size // 2, model.vocab_size)), tx,
        optimizer.learning_rate(train), shardings, batch_sharding), mesh, rules)
    ids = np.random.default_rng(0).integers(0, model.vocab_size, (batch_size, seq_len), np.int32)
    batch = {"ids": jax.device_put(ids, batch_sharding)}
    times = []
    for index in range(warmup + steps):
        start = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        if index >= warmup:
            times.append(time.perf_counter() - start)
    abstract = jax.eval_shape(functools.partial(decoder_task.init_params, model),
                              jax.random.key(0))
    count = sum(x.size for x in jax.tree.leaves(abstract))
    flops = accounting.flops_per_token(model, count, accounting.lookup_only_params(
        model, abstract), seq_len=seq_len)["total"]
    tokens_per_s = batch_size * seq_len / _best(times)
    peak = throughput.peak_flops_per_device() * jax.device_count()
    return {"tokens_per_s": tokens_per_s, "mfu": flops * tokens_per_s / peak,
            "step_seconds_best": _best(times), "step_seconds": times,
            "flops_per_token": flops, "peak_flops": peak, "loss": float(metrics["loss"])}


def time_decode(model, batch: int, new_tokens: int, repeats: int) -> dict:
    import jax  # noqa: PLC0415

    from cm3leon_jax.generation import constraints as constraints_lib, decode  # noqa: PLC0415
    from cm3leon_jax.generation.sampling import SamplingConfig  # noqa: PLC0415
    from cm3leon_jax.models import kv_cache  # noqa: PLC0415
    from cm3leon_jax.train import decoder_task  # noqa: PLC0415

    params, unstacked = kv_cache.unstack_layers(
        decoder_task.init_params(model, jax.random.key(0)), model)
    prompts = list(np.random.default_rng(1).integers(1, model.vocab_size, (batch, 16), np.int32))
    constraints = constraints_lib.unconstrained(model.vocab_size)

    def run():
        return decode.decode(params, unstacked, prompts, max_new_tokens=new_tokens,
                             constraints=constraints, sampling=SamplingConfig(top_p=0.9),
                             batch_size=batch)

    run()  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return {"tokens_per_s": batch * new_tokens / _best(times), "seconds": times}


def torch_reference(model, batch_size: int, seq_len: int, steps: int, batches: tuple[int, ...],
                    new_tokens: int, threads: tuple[int, ...]) -> dict:
    import torch  # noqa: PLC0415
    from transformers import OPTConfig, OPTForCausalLM  # noqa: PLC0415

    device = "cuda" if torch.cuda.is_available() else "cpu"
    opt = OPTForCausalLM(OPTConfig(
        vocab_size=model.vocab_size, hidden_size=model.d_model, num_hidden_layers=model.num_layers,
        ffn_dim=4 * model.d_model, num_attention_heads=model.num_heads,
        max_position_embeddings=model.max_seq_len, enable_bias=False,
        layer_norm_elementwise_affine=False, activation_function="gelu", dropout=0.0,
        attention_dropout=0.0, word_embed_proj_dim=model.d_model,
        tie_word_embeddings=True)).to(device)
    optimizer = torch.optim.AdamW(opt.parameters(), lr=1e-4, betas=(0.9, 0.95))
    ids = torch.randint(0, model.vocab_size, (batch_size, seq_len), device=device)
    bf16 = model.dtype == "bfloat16"

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    out = {"device": device, "settings": {}}
    for name, count, attention in reference.settings(
            threads if device == "cpu" else (torch.get_num_threads(),)):
        torch.set_num_threads(count)
        opt.set_attn_implementation(attention)
        train_times = []
        for index in range(1 + steps):
            start = time.perf_counter()
            with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                loss = opt(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            sync()
            if index:
                train_times.append(time.perf_counter() - start)
        figures = {"train_tokens_per_s": batch_size * seq_len / _best(train_times)}
        opt.eval()
        for batch in batches:
            prompt = torch.randint(1, model.vocab_size, (batch, 16), device=device)
            times = []
            for _ in range(2):
                start = time.perf_counter()
                with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                    opt.generate(prompt, do_sample=True, top_p=0.9, top_k=0,
                                 max_new_tokens=new_tokens, min_new_tokens=new_tokens)
                sync()
                times.append(time.perf_counter() - start)
            figures[f"decode_batch{batch}_tokens_per_s"] = batch * new_tokens / _best(times)
        opt.train()
        out["settings"][name] = figures
    out["best"], out["best_setting"] = reference.best_per_figure(out["settings"])
    return out


def report(result: dict) -> str:
    lines = [f"{result['device']} x {result['devices']}, model {result['model']}, "
             f"{result['batch_size']} x {result['seq_len']} tokens per step",
             "", "| what | ours | torch (best setting) | ours / torch |", "|---|---:|---:|---:|"]
    torch_best = (result.get("torch") or {}).get("best", {})
    setting = (result.get("torch") or {}).get("best_setting", {})
    for name, figures in result["train"].items():
        theirs = torch_best.get("train_tokens_per_s", 0.0)
        ratio = figures["tokens_per_s"] / theirs if theirs else float("nan")
        # Same model and tokens per step, so MFU scales with tokens/s.
        mfu = figures["mfu"] * theirs / figures["tokens_per_s"]
        lines.append(f"| train step, attention={name} | {figures['tokens_per_s']:,.0f} tok/s, "
                     f"MFU {figures['mfu']:.1%} | {theirs:,.0f} tok/s, MFU {mfu:.1%} "
                     f"({setting.get('train_tokens_per_s', '-')}) | {ratio:.2f}x |")
    for batch, figures in result["decode"].items():
        key = f"decode_batch{batch}_tokens_per_s"
        theirs = torch_best.get(key, 0.0)
        ratio = figures["tokens_per_s"] / theirs if theirs else float("nan")
        lines.append(f"| decode, batch {batch} | {figures['tokens_per_s']:,.1f} tok/s | "
                     f"{theirs:,.1f} tok/s ({setting.get(key, '-')}) | {ratio:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry_run", action="store_true", help="Tiny shapes (CPU, tests).")
    parser.add_argument("--seq_len", type=int, default=2048)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--new_tokens", type=int, default=128)
    parser.add_argument("--decode_batches", default="1,16")
    parser.add_argument("--attention", default="", help="Comma list; default: this backend's.")
    parser.add_argument("--torch", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--torch_threads", default=reference.TORCH_THREADS,
                        help="CPU only: " + reference.THREADS_HELP)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    if args.dry_run:
        args.seq_len, args.batch_size, args.steps, args.warmup = 128, 2, 1, 1
        args.new_tokens = 4

    import jax  # noqa: PLC0415

    backend = jax.default_backend()
    model = model_config(args.dry_run, args.seq_len)
    choices = args.attention.split(",") if args.attention else ATTENTION_BY_BACKEND[backend]
    result = {"device": jax.devices()[0].device_kind, "backend": backend,
              "devices": jax.device_count(), "host": host_platform.node(),
              "model": f"{model.preset} {model.num_layers}L d{model.d_model} "
                       f"vocab {model.vocab_size} {model.dtype}",
              "seq_len": args.seq_len, "batch_size": args.batch_size, "dry_run": args.dry_run,
              "train": {}, "decode": {}}
    import dataclasses  # noqa: PLC0415

    for attention in choices:
        print(f"[accelerator] train step, attention={attention}", flush=True)
        result["train"][attention] = time_train_step(
            dataclasses.replace(model, attention=attention), args.batch_size, args.seq_len,
            args.steps, args.warmup)
    batches = tuple(int(b) for b in args.decode_batches.split(","))
    for batch in batches:
        print(f"[accelerator] decode, batch {batch}", flush=True)
        result["decode"][str(batch)] = time_decode(dataclasses.replace(model, attention="xla"),
                                                   batch, args.new_tokens, repeats=2)
    if args.torch:
        print("[accelerator] Hugging Face torch reference", flush=True)
        result["torch"] = torch_reference(model, args.batch_size, args.seq_len, args.steps,
                                          batches, args.new_tokens,
                                          reference.thread_counts(args.torch_threads))
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(report(result))
    print(f"[accelerator] -> {out}")


if __name__ == "__main__":
    main()
