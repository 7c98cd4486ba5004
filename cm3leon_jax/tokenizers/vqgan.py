"""The VQ-GAN (taming-transformers / Make-A-Scene style): conv encoder, quantizer, conv decoder.

Images go in as float32 in [-1, 1], NHWC. The encoder is a ResNet that halves the resolution
between levels (`channel_multipliers` gives each level's width, so the downsampling factor is
2**(levels - 1)); the decoder mirrors it with one more residual block per level, as in taming.

Two simplifications of taming, both exact re-parametrisations: taming's encoder ends with
conv_out -> z_channels followed by a 1x1 `quant_conv` -> embed_dim, and its decoder starts with a
1x1 `post_quant_conv` followed by conv_in; a 1x1 conv after a 3x3 conv (with nothing between) is
itself a 3x3 conv, so each pair is one conv here. Dropout is left out (taming trains with 0).

The adversarial loss needs the decoder's last layer apart from the rest (its adaptive weight is a
ratio of gradient norms there), so `Decoder` returns the features that enter `conv_out`, and
`output_conv()` is the one definition of that layer.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from cm3leon_jax.config import VQGANConfig
from cm3leon_jax.tokenizers.quantizer import Quantized, VectorQuantizer


def output_conv(name: str | None = None) -> nn.Conv:
    """The decoder's last layer: features -> RGB."""
    return nn.Conv(3, (3, 3), padding=1, name=name)


def conv(x: jax.Array, features: int, kernel: int, padding: str, name: str) -> jax.Array:
    """A stride-1 square conv keeping the spatial size (call inside a compact module), its border
    padded with zeros (taming) or by repeating the edge pixels (`edge`: a flat image stays flat up
    to its border). The parameters are the plain `nn.Conv`'s either way."""
    pad = kernel // 2
    if padding == "edge" and pad:
        x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
        pad = 0
    return nn.Conv(features, (kernel, kernel), padding=pad, name=name)(x)


class ResBlock(nn.Module):
    """GroupNorm -> swish -> conv, twice, plus a (1x1-projected where widths differ) skip."""

    channels: int
    groups: int
    kernel: int = 3
    padding: str = "zeros"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = nn.swish(nn.GroupNorm(self.groups, name="norm1")(x))
        h = conv(h, self.channels, self.kernel, self.padding, "conv1")
        h = nn.swish(nn.GroupNorm(self.groups, name="norm2")(h))
        h = conv(h, self.channels, self.kernel, self.padding, "conv2")
        if x.shape[-1] != self.channels:
            x = nn.Conv(self.channels, (1, 1), name="skip")(x)
        return x + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over all positions of a feature map (taming's AttnBlock)."""

    groups: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        batch, height, width, channels = x.shape
        h = nn.GroupNorm(self.groups, name="norm")(x).reshape(batch, height * width, channels)
        q, k, v = (nn.Dense(channels, name=n)(h) for n in ("query", "key", "value"))
        weights = jax.nn.softmax(q @ k.transpose(0, 2, 1) / jnp.sqrt(channels), axis=-1)
        h = nn.Dense(channels, name="out")(weights @ v)
        return x + h.reshape(x.shape)


class Downsample(nn.Module):
    """Stride-2 3x3 conv with taming's asymmetric (0, 1) padding (zeros, or the edge repeated)."""

    padding: str = "zeros"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        pad = ((0, 1), (0, 1))
        if self.padding == "edge":
            x = jnp.pad(x, ((0, 0), *pad, (0, 0)), mode="edge")
            pad = 0
        return nn.Conv(x.shape[-1], (3, 3), strides=2, padding=pad, name="conv")(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv (no checkerboard artefacts of transposed convs)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        batch, height, width, channels = x.shape
        x = jax.image.resize(x, (batch, 2 * height, 2 * width, channels), "nearest")
        return nn.Conv(channels, (3, 3), padding=1, name="conv")(x)


class Encoder(nn.Module):
    """taming's encoder (`encoder_context="global"`), or its local variant (`"local"`): edge
    padding instead of zeros, no middle blocks, 1x1 convs at the code resolution. A global code
    sees the whole image (the middle blocks alone span +-4 codes), so a flat background is coded
    differently next to the object, the borders and far away; a local code depends on its patch
    and ~10 pixels around it, so flat background far from the object is one code wherever it is.
    """

    config: VQGANConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        local = cfg.encoder_context == "local"
        padding = "edge" if local else "zeros"
        h = conv(x, cfg.channels, 3, padding, "conv_in")
        levels = len(cfg.channel_multipliers)
        for level, multiplier in enumerate(cfg.channel_multipliers):
            kernel = 1 if local and level == levels - 1 else 3
            for block in range(cfg.num_res_blocks):
                h = ResBlock(cfg.channels * multiplier, cfg.norm_groups, kernel, padding,
                             name=f"down{level}_block{block}")(h)
                if h.shape[1] in cfg.attention_resolutions:
                    h = AttentionBlock(cfg.norm_groups, name=f"down{level}_attn{block}")(h)
            if level != levels - 1:
                h = Downsample(padding, name=f"down{level}_downsample")(h)
        width = h.shape[-1]
        if not local:
            h = ResBlock(width, cfg.norm_groups, name="mid_block1")(h)
            if cfg.mid_attention:
                h = AttentionBlock(cfg.norm_groups, name="mid_attn")(h)
            h = ResBlock(width, cfg.norm_groups, name="mid_block2")(h)
        h = nn.swish(nn.GroupNorm(cfg.norm_groups, name="norm_out")(h))
        return conv(h, cfg.code_dim, 1 if local else 3, padding, "conv_out")


class Decoder(nn.Module):
    config: VQGANConfig

    @nn.compact
    def __call__(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Returns (images in [-1, 1] (unclipped), features that enter the last conv)."""
        cfg = self.config
        width = cfg.channels * cfg.channel_multipliers[-1]
        h = nn.Conv(width, (3, 3), padding=1, name="conv_in")(z)
        h = ResBlock(width, cfg.norm_groups, name="mid_block1")(h)
        if cfg.mid_attention:
            h = AttentionBlock(cfg.norm_groups, name="mid_attn")(h)
        h = ResBlock(width, cfg.norm_groups, name="mid_block2")(h)
        for level in reversed(range(len(cfg.channel_multipliers))):
            for block in range(cfg.num_res_blocks + 1):
                h = ResBlock(cfg.channels * cfg.channel_multipliers[level], cfg.norm_groups,
                             name=f"up{level}_block{block}")(h)
                if h.shape[1] in cfg.attention_resolutions:
                    h = AttentionBlock(cfg.norm_groups, name=f"up{level}_attn{block}")(h)
            if level != 0:
                h = Upsample(name=f"up{level}_upsample")(h)
        features = nn.swish(nn.GroupNorm(cfg.norm_groups, name="norm_out")(h))
        return output_conv(name="conv_out")(features), features


class VQGAN(nn.Module):
    """Encoder -> VectorQuantizer -> Decoder. `__call__` is the training forward pass."""

    config: VQGANConfig

    def setup(self) -> None:
        cfg = self.config
        self.encoder = Encoder(cfg)
        self.quantizer = VectorQuantizer(
            codebook_size=cfg.codebook_size, code_dim=cfg.code_dim, lookup=cfg.codebook_lookup,
            update=cfg.codebook_update, ema_decay=cfg.ema_decay,
            commitment_cost=cfg.commitment_cost)
        self.decoder = Decoder(cfg)

    def __call__(self, images: jax.Array, train: bool = False
                 ) -> tuple[jax.Array, Quantized, jax.Array]:
        """images [B, H, W, 3] in [-1, 1] -> (reconstructions, quantizer output, last features)."""
        quantized = self.quantizer(self.encoder(images), train=train)
        reconstructions, features = self.decoder(quantized.straight_through)
        return reconstructions, quantized, features

    def encode(self, images: jax.Array) -> jax.Array:
        """images [B, H, W, 3] in [-1, 1] -> int32 codes [B, h, w]."""
        return self.quantizer(self.encoder(images)).codes

    def decode(self, codes: jax.Array) -> jax.Array:
        """int codes [B, h, w] -> images [B, H, W, 3] in [-1, 1] (unclipped)."""
        vectors = self.quantizer.codebook()[codes]
        return self.decoder(vectors)[0]


def init_key(seed: int) -> jax.Array:
    """PRNG key for initialisation and codebook restarts.

    `rbg` instead of the default threefry: XLA compiles threefry's bit generation for every
    parameter into a large unrolled graph (about 20 s to compile this model's init on the 2-core
    CPU, against 4 s with rbg). The bits differ from threefry's; nothing depends on them.
    """
    return jax.random.key(seed, impl="rbg")


def init_variables(config: VQGANConfig, seed: int = 0) -> dict:
    """Freshly initialised variables (`params` and the quantizer's `vq_state`), jit-compiled."""
    model = VQGAN(config)
    dummy = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
    return jax.jit(lambda: model.init(init_key(seed), dummy))()
