"""VQ-GAN losses and image metrics: reconstruction, hinge GAN, taming's adaptive weight, PSNR.

Images are float32 in [-1, 1] inside the model; `to_model_range` / `to_uint8` convert at the edges.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def to_model_range(images_uint8: jax.Array) -> jax.Array:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return images_uint8.astype(jnp.float32) / 127.5 - 1.0


def to_uint8(images: jax.Array) -> jax.Array:
    """float [-1, 1] (clipped) -> uint8 [0, 255], rounded."""
    return jnp.round(jnp.clip((images + 1.0) * 127.5, 0.0, 255.0)).astype(jnp.uint8)


def edge_weights(targets: jax.Array, strength: float) -> jax.Array:
    """Per-pixel loss weights [B, H, W, 1]: 1 + strength * the target's local contrast (the largest
    absolute difference to a 4-neighbour, over channels, in [0, 1]). Flat regions weigh 1, edges
    up to 1 + strength."""
    padded = jnp.pad(targets, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    neighbours = (padded[:, 1:-1, :-2], padded[:, 1:-1, 2:], padded[:, :-2, 1:-1],
                  padded[:, 2:, 1:-1])
    contrast = jnp.max(jnp.stack([jnp.abs(n - targets) for n in neighbours]), axis=0)
    return 1.0 + strength * jnp.max(contrast, axis=-1, keepdims=True) / 2.0


def reconstruction_loss(reconstructions: jax.Array, targets: jax.Array, kind: str,
                        edge_weight: float = 0.0) -> jax.Array:
    """Mean absolute (`l1`) or squared (`l2`) error over every pixel and channel; with
    `edge_weight` > 0 a weighted mean by `edge_weights` of the targets."""
    difference = reconstructions - targets
    if kind == "l1":
        errors = jnp.abs(difference)
    elif kind == "l2":
        errors = jnp.square(difference)
    else:
        raise ValueError(f"unknown reconstruction loss {kind!r}; use 'l1' or 'l2'")
    if not edge_weight:
        return jnp.mean(errors)
    weights = jax.lax.stop_gradient(edge_weights(targets, edge_weight))
    return jnp.mean(errors * weights) / jnp.mean(weights)


def discriminator_hinge_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
    """Hinge loss of the discriminator (taming): mean relu(1 - D(x)) + mean relu(1 + D(G(z)))."""
    return 0.5 * (jnp.mean(jax.nn.relu(1.0 - real_logits))
                  + jnp.mean(jax.nn.relu(1.0 + fake_logits)))


def generator_adversarial_loss(fake_logits: jax.Array) -> jax.Array:
    """The generator's side of the hinge GAN: -mean D(G(z))."""
    return -jnp.mean(fake_logits)


def adaptive_weight(reconstruction_grad: jax.Array, adversarial_grad: jax.Array,
                    maximum: float) -> jax.Array:
    """taming's lambda = ||grad_L L_rec|| / (||grad_L L_gan|| + 1e-4), L the decoder's last layer.

    Balances the two losses where they meet the image, whatever their raw scales; clipped to
    [0, maximum] and never differentiated through.
    """
    ratio = jnp.linalg.norm(reconstruction_grad) / (jnp.linalg.norm(adversarial_grad) + 1e-4)
    return jax.lax.stop_gradient(jnp.clip(ratio, 0.0, maximum))


def psnr(reconstructions_uint8: np.ndarray | jax.Array, targets_uint8: np.ndarray | jax.Array
         ) -> jax.Array:
    """Per-image PSNR in dB of uint8 images [B, H, W, C] (peak 255); identical images give 100."""
    difference = (jnp.asarray(reconstructions_uint8, jnp.float32)
                  - jnp.asarray(targets_uint8, jnp.float32))
    mse = jnp.mean(jnp.square(difference), axis=tuple(range(1, difference.ndim)))
    return jnp.where(mse > 0, 10.0 * jnp.log10(255.0**2 / jnp.maximum(mse, 1e-10)), 100.0)
