"""PatchGAN discriminator (pix2pix / taming's NLayerDiscriminator): one real/fake logit per patch.

Judging overlapping patches instead of the whole image pushes the decoder towards locally sharp,
texture-correct output, which is what an L1/L2 loss alone blurs away. taming uses BatchNorm; here
GroupNorm, so the logits of one image never depend on the rest of the (sharded) batch and there are
no running statistics to synchronise or checkpoint.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax


def _groups(channels: int) -> int:
    return math.gcd(channels, 32)


class PatchDiscriminator(nn.Module):
    """images [B, H, W, 3] in [-1, 1] -> logits [B, h, w, 1] (h ~ H / 2**num_layers)."""

    channels: int = 64
    num_layers: int = 2

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = nn.leaky_relu(nn.Conv(self.channels, (4, 4), strides=2, padding=1, name="conv0")(x),
                          0.2)
        width = self.channels
        for layer in range(1, self.num_layers + 1):
            # The last of these keeps the resolution (stride 1) and widens, as in taming.
            width = self.channels * min(2**layer, 8)
            stride = 2 if layer < self.num_layers else 1
            h = nn.Conv(width, (4, 4), strides=stride, padding=1, use_bias=False,
                        name=f"conv{layer}")(h)
            h = nn.leaky_relu(nn.GroupNorm(_groups(width), name=f"norm{layer}")(h), 0.2)
        return nn.Conv(1, (4, 4), strides=1, padding=1, name="logits")(h)
