"""The image part of a Chameleon export: HF's `model.vqmodel` from our VQ-GAN's encoder.

`ChameleonForConditionalGeneration` contains a VQ-VAE *encoder* (`ChameleonVQVAE`: Make-A-Scene /
taming layout, no decoder) that turns `pixel_values` into image token ids. Our VQ-GAN
(`tokenizers/vqgan.py`) has the same encoder, up to re-parametrisations that convert exactly:

* our encoder's `conv_out` maps straight to the code dimension (taming's conv_out + 1x1
  quant_conv folded into one conv), so HF gets latent_channels = embed_dim = code_dim and
  identity 1x1 `quant_conv` / `post_quant_conv`;
* our attention blocks use Dense layers on flattened positions, HF 1x1 convs: the same matrices;
* cosine codebook lookup (normalised encoder outputs and codes) equals HF's Euclidean lookup
  against the *unit-normalised* codebook we export: for unit codes, argmin ||z - e||^2 =
  argmax z.e, whatever the norm of z;
* flax kernels [kh, kw, in, out] -> torch [out, in, kh, kw].

It converts when HF's hard-coded choices hold: GroupNorm with 32 groups (`norm_groups=32`) and
attention either everywhere it is configured plus in the middle (`mid_attention=True`, HF
`attn_type="vanilla"`) or nowhere (`mid_attention=False` with no `attention_resolutions`). Then
`model.model.get_image_tokens(pixel_values)` (pixels in [-1, 1], NCHW) returns exactly our ids.

Otherwise (or without a VQ-GAN) the export writes a *minimal* `vq_config` (one level, 32 channels)
and no `model.vqmodel.*` tensors: transformers then initialises that tiny encoder randomly (it
logs them as newly initialised) and the `pixel_values` path is not usable; tokenise images with
the exported VQ-GAN instead (`load_tokenizers.py`) and pass the ids. The note returned says which
case applied.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

PREFIX = "model.vqmodel."
HF_GROUPS = 32


def _torch_conv(kernel: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(kernel, (3, 2, 0, 1)))


def _dense_as_conv(kernel: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(kernel.T[:, :, None, None])


def _unit_rows(table: np.ndarray) -> np.ndarray:
    table = table.astype(np.float64)
    return (table / np.linalg.norm(table, axis=-1, keepdims=True)).astype(np.float32)


def why_not_convertible(config) -> Optional[str]:
    """None when our VQ-GAN encoder converts exactly, else the reason."""
    if config.norm_groups != HF_GROUPS:
        return (f"vqgan.norm_groups={config.norm_groups} (HF's ChameleonVQVAE hard-codes "
                f"GroupNorm({HF_GROUPS}); train the VQ-GAN with norm_groups={HF_GROUPS})")
    if config.encoder_context != "global":
        return (f"vqgan.encoder_context={config.encoder_context!r} (HF's encoder is taming's: "
                f"zero padding, 3x3 convs and middle blocks everywhere)")
    if not config.mid_attention and config.attention_resolutions:
        return ("vqgan.mid_attention=False with attention_resolutions="
                f"{config.attention_resolutions} (HF switches both with one attn_type)")
    return None


def hf_vq_config(config) -> dict:
    return dict(embed_dim=config.code_dim, num_embeddings=config.codebook_size,
                double_latent=False, latent_channels=config.code_dim,
                resolution=config.image_size, in_channels=3, base_channels=config.channels,
                channel_multiplier=list(config.channel_multipliers),
                num_res_blocks=config.num_res_blocks,
                attn_resolutions=list(config.attention_resolutions),
                dropout=0.0, attn_type="vanilla" if config.mid_attention else "none")


def minimal_vq_config(codebook_size: int, image_size: int) -> dict:
    """The smallest encoder HF accepts (one level of 32 channels): a placeholder."""
    return dict(embed_dim=8, num_embeddings=codebook_size, double_latent=False,
                latent_channels=8, resolution=image_size, in_channels=3, base_channels=HF_GROUPS,
                channel_multiplier=[1], num_res_blocks=1, attn_resolutions=[], dropout=0.0,
                attn_type="none")


def _res_block(params: dict, hf: str) -> list[tuple[str, np.ndarray]]:
    out = []
    for ours, theirs in (("norm1", "norm1"), ("norm2", "norm2")):
        out += [(f"{hf}.{theirs}.weight", params[ours]["scale"]),
                (f"{hf}.{theirs}.bias", params[ours]["bias"])]
    for ours, theirs in (("conv1", "conv1"), ("conv2", "conv2"), ("skip", "nin_shortcut")):
        if ours in params:
            out += [(f"{hf}.{theirs}.weight", _torch_conv(params[ours]["kernel"])),
                    (f"{hf}.{theirs}.bias", params[ours]["bias"])]
    return out


def _attention_block(params: dict, hf: str) -> list[tuple[str, np.ndarray]]:
    out = [(f"{hf}.norm.weight", params["norm"]["scale"]),
           (f"{hf}.norm.bias", params["norm"]["bias"])]
    for ours, theirs in (("query", "q"), ("key", "k"), ("value", "v"), ("out", "proj_out")):
        out += [(f"{hf}.{theirs}.weight", _dense_as_conv(params[ours]["kernel"])),
                (f"{hf}.{theirs}.bias", params[ours]["bias"])]
    return out


def encoder_tensors(config, variables: dict) -> list[tuple[str, np.ndarray]]:
    """HF `model.vqmodel.*` tensors of our VQ-GAN (check `why_not_convertible` first)."""
    variables = {k: _as_numpy_tree(v) for k, v in variables.items()}
    encoder = variables["params"]["encoder"]
    e = PREFIX + "encoder"
    tensors = [(f"{e}.conv_in.weight", _torch_conv(encoder["conv_in"]["kernel"])),
               (f"{e}.conv_in.bias", encoder["conv_in"]["bias"])]
    levels = len(config.channel_multipliers)
    for level in range(levels):
        for block in range(config.num_res_blocks):
            tensors += _res_block(encoder[f"down{level}_block{block}"],
                                  f"{e}.down.{level}.block.{block}")
            if f"down{level}_attn{block}" in encoder:
                tensors += _attention_block(encoder[f"down{level}_attn{block}"],
                                            f"{e}.down.{level}.attn.{block}")
        if level != levels - 1:
            conv = encoder[f"down{level}_downsample"]["conv"]
            tensors += [(f"{e}.down.{level}.downsample.conv.weight", _torch_conv(conv["kernel"])),
                        (f"{e}.down.{level}.downsample.conv.bias", conv["bias"])]
    tensors += _res_block(encoder["mid_block1"], f"{e}.mid.block_1")
    if config.mid_attention:
        tensors += _attention_block(encoder["mid_attn"], f"{e}.mid.attn_1")
    tensors += _res_block(encoder["mid_block2"], f"{e}.mid.block_2")
    tensors += [(f"{e}.norm_out.weight", encoder["norm_out"]["scale"]),
                (f"{e}.norm_out.bias", encoder["norm_out"]["bias"]),
                (f"{e}.conv_out.weight", _torch_conv(encoder["conv_out"]["kernel"])),
                (f"{e}.conv_out.bias", encoder["conv_out"]["bias"])]
    identity = np.eye(config.code_dim, dtype=np.float32)[:, :, None, None]
    for name in ("quant_conv", "post_quant_conv"):
        tensors += [(f"{PREFIX}{name}.weight", identity),
                    (f"{PREFIX}{name}.bias", np.zeros(config.code_dim, np.float32))]
    quantizer = variables.get("params", {}).get("quantizer", {})
    table = quantizer.get("codebook")
    if table is None:
        table = variables["vq_state"]["quantizer"]["codebook"]
    table = _unit_rows(table) if config.codebook_lookup == "cosine" else table
    tensors.append((f"{PREFIX}quantize.embedding.weight", table))
    return [(name, np.asarray(array, np.float32)) for name, array in tensors]


def _as_numpy_tree(tree):
    if isinstance(tree, dict):
        return {k: _as_numpy_tree(v) for k, v in tree.items()}
    return np.asarray(tree)


def chameleon_vq_part(vocab) -> tuple[dict, list[tuple[str, np.ndarray]], str]:
    """(vq_config, model.vqmodel tensors, a note for the report) for a Chameleon export."""
    if vocab is None or not vocab.image_tokenizer_path:
        codebook = vocab.codebook_size if vocab is not None else 2
        return (minimal_vq_config(codebook, 16), [],
                "no VQ-GAN available: model.vqmodel is a randomly initialised placeholder; pass "
                "image token ids, not pixel_values")
    from cm3leon_jax.tokenizers import image_tokenizer  # noqa: PLC0415

    tokenizer = image_tokenizer.ImageTokenizer.load(vocab.image_tokenizer_path, batch_size=1)
    config = tokenizer.config
    reason = why_not_convertible(config)
    if reason is not None:
        return (minimal_vq_config(config.codebook_size, config.image_size), [],
                f"the VQ-GAN encoder does not map onto HF's ChameleonVQVAE ({reason}): "
                "model.vqmodel is a randomly initialised placeholder; tokenise images with the "
                "exported VQ-GAN (load_tokenizers.py) and pass ids, not pixel_values")
    return (hf_vq_config(config), encoder_tensors(config, dict(tokenizer.variables)),
            "model.vqmodel is our VQ-GAN encoder: get_image_tokens(pixel_values in [-1, 1]) "
            "gives our image ids")
