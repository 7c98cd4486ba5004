"""Speed of VQ-GAN encoding (images -> codes), against the same encoder in PyTorch.

    PYTHONPATH=. python benchmarks/vqgan_encode.py [--tokenizer W/image_tokenizer]
        # writes benchmarks/results/vqgan_encode.json

Two implementations of one computation (conv encoder + nearest-code lookup) with the same weights:

* `jax`: `ImageTokenizer.encode` (uint8 in, int32 codes out; jit-compiled, fixed batch);
* `torch`: a PyTorch (CPU, eager, NCHW, `torch.inference_mode`) re-implementation of the encoder
  and the lookup in this file, with the weights copied from the Flax parameters — the reference a
  PyTorch user would write (taming's own code is this shape), timed at every setting that can
  be its fastest (`benchmarks/reference.py`): intra-op threads (`--torch_threads`, default 1,2) x
  the attention block written out (`eager`) or as `F.scaled_dot_product_attention` (`sdpa`);
  every setting's figure is kept and JAX is divided by the best.

Before timing, the script checks that both produce the same codes (agreement is reported; ties
between equidistant codes may rarely differ) and that the encoder outputs match to float
tolerance. Weights come from `--tokenizer` (a trained export) or, without it, a random
initialisation of `experiments/vqgan_shapes.py`'s model (speed does not depend on the weights).
Also measured in the same run: the machine's f32 matmul rate (2048^2, the faster of jnp.dot and
torch.mm at its best thread count) and the encoder's FLOPs (XLA cost analysis); their quotient is
the FLOP bound in images/s, and both sides are reported as a fraction of it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import reference

from cm3leon_jax import config as config_lib
from cm3leon_jax.config import VQGANConfig
from cm3leon_jax.data.sources.shapes import render, scenes
from cm3leon_jax.tokenizers import losses
from cm3leon_jax.tokenizers.image_tokenizer import ImageTokenizer
from cm3leon_jax.tokenizers.vqgan import VQGAN, init_variables

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "vqgan_encode.json"


def shapes_config() -> VQGANConfig:
    spec = importlib.util.spec_from_file_location("vqgan_shapes",
                                                  ROOT / "experiments" / "vqgan_shapes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return config_lib.section(module.get_config(), "vqgan", VQGANConfig)


# ------------------------------------------------------------------------- torch reference --

def torch_encoder(config: VQGANConfig, variables: dict, attention: str):
    """The Flax encoder + lookup as a torch.nn.Module with copied weights; `attention` is
    "eager" (the product and softmax written out) or "sdpa" (torch's fused kernel)."""
    import torch  # noqa: PLC0415
    from torch import nn  # noqa: PLC0415
    import torch.nn.functional as F  # noqa: PLC0415

    def conv(params, stride=1, padding=1):
        kernel = torch.from_numpy(np.asarray(params["kernel"]).transpose(3, 2, 0, 1).copy())
        layer = nn.Conv2d(kernel.shape[1], kernel.shape[0], kernel.shape[2:], stride=stride,
                          padding=padding)
        layer.weight.data, layer.bias.data = kernel, torch.from_numpy(np.array(params["bias"]))
        return layer

    def norm(params):
        layer = nn.GroupNorm(config.norm_groups, len(params["scale"]), eps=1e-6)
        layer.weight.data = torch.from_numpy(np.array(params["scale"]))
        layer.bias.data = torch.from_numpy(np.array(params["bias"]))
        return layer

    def dense(params):
        kernel = np.asarray(params["kernel"])
        layer = nn.Linear(*kernel.shape)
        layer.weight.data = torch.from_numpy(kernel.T.copy())
        layer.bias.data = torch.from_numpy(np.array(params["bias"]))
        return layer

    class ResBlock(nn.Module):
        def __init__(self, p):
            super().__init__()
            self.norm1, self.conv1 = norm(p["norm1"]), conv(p["conv1"])
            self.norm2, self.conv2 = norm(p["norm2"]), conv(p["conv2"])
            self.skip = conv(p["skip"], padding=0) if "skip" in p else nn.Identity()

        def forward(self, x):
            h = self.conv1(F.silu(self.norm1(x)))
            h = self.conv2(F.silu(self.norm2(h)))
            return self.skip(x) + h

    class Attention(nn.Module):
        def __init__(self, p):
            super().__init__()
            self.norm = norm(p["norm"])
            self.q, self.k, self.v, self.out = (dense(p[n]) for n in ("query", "key", "value",
                                                                        "out"))

        def forward(self, x):
            b, c, h, w = x.shape
            t = self.norm(x).flatten(2).transpose(1, 2)
            q, k, v = self.q(t), self.k(t), self.v(t)
            if attention == "sdpa":  # its default scale is 1 / sqrt(c), as below
                mixed = F.scaled_dot_product_attention(q, k, v)
            else:
                mixed = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(c), -1) @ v
            return x + self.out(mixed).transpose(1, 2).reshape(b, c, h, w)

    class Downsample(nn.Module):
        def __init__(self, p):
            super().__init__()
            self.conv = conv(p["conv"], stride=2, padding=0)

        def forward(self, x):
            return self.conv(F.pad(x, (0, 1, 0, 1)))

    params = variables["params"]["encoder"]
    layers = [conv(params["conv_in"])]
    levels = len(config.channel_multipliers)
    side = config.image_size
    for level in range(levels):
        for block in range(config.num_res_blocks):
            layers.append(ResBlock(params[f"down{level}_block{block}"]))
            if side in config.attention_resolutions:
                layers.append(Attention(params[f"down{level}_attn{block}"]))
        if level != levels - 1:
            layers.append(Downsample(params[f"down{level}_downsample"]))
            side //= 2
    layers.append(ResBlock(params["mid_block1"]))
    if config.mid_attention:
        layers.append(Attention(params["mid_attn"]))
    layers += [ResBlock(params["mid_block2"]), norm(params["norm_out"]), nn.SiLU(),
               conv(params["conv_out"])]
    encoder = nn.Sequential(*layers).eval()

    if config.codebook_update == "loss":
        table = np.asarray(variables["params"]["quantizer"]["codebook"])
    else:
        table = np.asarray(variables["vq_state"]["quantizer"]["codebook"])
    codebook = torch.from_numpy(table)
    if config.codebook_lookup == "cosine":
        codebook = F.normalize(codebook, dim=-1, eps=1e-6)
    half_norms = 0.5 * (codebook * codebook).sum(-1)

    def encode(images_uint8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            x = torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float() / 127.5 - 1.0
            z = encoder(x).permute(0, 2, 3, 1)
            if config.codebook_lookup == "cosine":
                z = z * torch.rsqrt((z * z).sum(-1, keepdim=True) + 1e-6)
            codes = torch.argmax(z @ codebook.T - half_norms, dim=-1)
            return codes.int().numpy(), z.numpy()

    return encode


# --------------------------------------------------------------------------------- timing --

def images_per_second(encode, images: np.ndarray, batch: int, repeats: int) -> float:
    encode(images[:batch])  # warm-up / compilation
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        for index in range(0, len(images), batch):
            encode(images[index:index + batch])
        best = min(best, time.perf_counter() - start)
    return len(images) / best


def matmul_gflops(threads: tuple[int, ...]) -> dict[str, float]:
    """float32 2048^2 matmul GFLOP/s of JAX and of torch (its best thread count)."""
    import torch  # noqa: PLC0415

    a = jnp.ones((2048, 2048), jnp.float32)
    dot = jax.jit(lambda x: x @ x)
    dot(a).block_until_ready()
    start = time.perf_counter()
    for _ in range(10):
        out = dot(a)
    out.block_until_ready()
    rates = {"jax": 10 * 2 * 2048**3 / (time.perf_counter() - start) / 1e9, "torch": 0.0}
    b = torch.ones(2048, 2048)
    for count in threads:
        torch.set_num_threads(count)
        b @ b
        start = time.perf_counter()
        for _ in range(10):
            b @ b
        rates["torch"] = max(rates["torch"],
                             10 * 2 * 2048**3 / (time.perf_counter() - start) / 1e9)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokenizer", default="", help="an ImageTokenizer export (optional)")
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--torch_threads", default=reference.TORCH_THREADS,
                        help=reference.THREADS_HELP)
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args()

    import torch  # noqa: PLC0415

    threads = reference.thread_counts(args.torch_threads)
    if args.tokenizer:
        tokenizer = ImageTokenizer.load(args.tokenizer, batch_size=args.batch)
        config = tokenizer.config
    else:
        config = shapes_config()
        variables = init_variables(config, seed=0)
        tokenizer = ImageTokenizer(config, variables, batch_size=args.batch)
    variables = jax.device_get(tokenizer.variables)
    references = {kind: torch_encoder(config, variables, kind) for kind in reference.ATTENTION}

    rng = np.random.default_rng(0)
    images = np.stack([render.render(scenes.sample_scene(rng), config.image_size)
                       for _ in range(args.images)])

    # Agreement first: the implementations must compute the same thing.
    sample = images[:args.batch]
    jax_codes = tokenizer.encode(sample)
    torch_codes, torch_latents = references["eager"](sample)
    sdpa_codes, sdpa_latents = references["sdpa"](sample)
    jax_latents = np.asarray(VQGAN(config).apply(
        variables, losses.to_model_range(jnp.asarray(sample)),
        method=lambda module, x: module.encoder(x)))
    if config.codebook_lookup == "cosine":
        jax_latents = jax_latents / np.sqrt((jax_latents**2).sum(-1, keepdims=True) + 1e-6)
    latent_difference = float(max(np.abs(jax_latents - torch_latents).max(),
                                  np.abs(jax_latents - sdpa_latents).max()))
    agreement = float(min(np.mean(jax_codes == torch_codes), np.mean(jax_codes == sdpa_codes)))
    if latent_difference > 1e-3 or agreement < 0.99:
        raise SystemExit(f"implementations disagree: max latent difference {latent_difference}, "
                         f"code agreement {agreement}")

    peaks = matmul_gflops(threads)
    flops_per_image = jax.jit(lambda v, x: VQGAN(config).apply(
        v, losses.to_model_range(x), method=VQGAN.encode)).lower(
        variables, jnp.asarray(sample)).compile().cost_analysis()["flops"] / len(sample)
    bound = max(peaks.values()) * 1e9 / flops_per_image

    def torch_run(count: int, encode):
        def run(batch: np.ndarray) -> np.ndarray:
            torch.set_num_threads(count)
            return encode(batch)[0]
        return run

    runners = {"jax": tokenizer.encode}
    for name, count, kind in reference.settings(threads):
        runners[f"torch_{name}"] = torch_run(count, references[kind])
    rates = {}
    load_before = os.getloadavg()[0]
    for turn in range(2):  # alternate so every side sees the same background load
        for name, encode in runners.items():
            rate = images_per_second(encode, images, args.batch, args.repeats)
            rates[name] = max(rates.get(name, 0.0), rate)
    setting, torch_best = reference.best({name.removeprefix("torch_"): rate
                                          for name, rate in rates.items() if name != "jax"})
    result = {
        "command": "PYTHONPATH=. python benchmarks/vqgan_encode.py "
                   + " ".join(f"--{k}={v}" for k, v in vars(args).items() if k != "output"),
        "what": "VQ-GAN encode, uint8 images -> int32 codes, best of passes",
        "tokenizer": args.tokenizer or "random init of experiments/vqgan_shapes.py",
        "image_size": config.image_size, "code_grid": config.code_grid_size,
        "codebook_size": config.codebook_size, "images": args.images, "batch": args.batch,
        "jax_images_per_s": round(rates["jax"], 1),
        "torch_images_per_s_by_setting": {name.removeprefix("torch_"): round(rate, 1)
                                          for name, rate in rates.items() if name != "jax"},
        "torch_best_setting": setting,
        "torch_images_per_s": round(torch_best, 1),
        "jax_over_torch": round(rates["jax"] / torch_best, 2),
        "code_agreement": agreement, "max_latent_difference": latent_difference,
        "encoder_gflop_per_image": round(flops_per_image / 1e9, 4),
        "jax_encoder_gflops": round(rates["jax"] * flops_per_image / 1e9, 1),
        "matmul_peak_gflops_f32": {name: round(rate, 1) for name, rate in peaks.items()},
        "flop_bound_images_per_s": round(bound, 1),
        "jax_fraction_of_bound": round(rates["jax"] / bound, 3),
        "torch_fraction_of_bound": round(torch_best / bound, 3),
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "cpu": reference.cpu_model(), "cpu_count": os.cpu_count(),
        "devices": [str(d) for d in jax.devices()],
        "torch_version": torch.__version__, "jax_version": jax.__version__,
    }
    pathlib.Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"JAX {rates['jax']:.1f} images/s ({reference.percent(rates['jax'], bound)}), torch "
          f"{torch_best:.1f} at {setting} ({reference.percent(torch_best, bound)}), FLOP bound "
          f"{bound:.1f}; JAX / torch {rates['jax'] / torch_best:.2f}x")


if __name__ == "__main__":
    main()
