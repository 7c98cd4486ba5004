"""Fréchet distance between two sets of image features (FID when the features are an image
encoder's), and the encoders this project can offer.

    d² = |mu_1 - mu_2|² + tr(S_1) + tr(S_2) - 2 tr((S_1 S_2)^½)

The trace of the matrix square root is computed without forming it: with A = S_1^½ (symmetric,
from `eigh`), S_1 S_2 is similar to A S_2 A, which is symmetric positive semi-definite, so
tr((S_1 S_2)^½) = sum of sqrt(eigenvalues of A S_2 A). This stays real where `scipy.linalg.sqrtm`
returns tiny imaginary parts for the (often rank-deficient) covariances of a few samples; the two
agree to rounding on full-rank inputs (tested, with the closed form of two Gaussians).

Features (`FeatureExtractor`): FID's Inception network was trained on ImageNet, and nothing may be
downloaded here. A user who has its weights (pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`)
passes the file (`evaluate --fid_weights PATH`) and gets the standard features
(`inception`, `inception.py`); otherwise they come from an image encoder this project trains:

* `biencoder` (preferred): the retrieval bi-encoder's image tower (`retrieval/encoder.py`,
  `W/retrieval_encoder` or `retrieval.encoder_dir`), its pooled class-token state *before* the
  projection and L2 normalisation (`vision_width` numbers), the analogue of Inception's pool3
  layer. Trained contrastively on `shapes` captions, so its features separate colour, shape and
  position: what a caption asks for.
* `vqgan` (fallback, when the workdir has no trained retrieval encoder): the VQ-GAN encoder's
  latents before quantisation, averaged over the spatial grid (`code_dim` numbers). Blind to
  *where* things are; the metrics say which features were used (`fid_features`), and figures from
  the two are not comparable.

Small samples bias FID upward (the covariance of n samples has rank < n); compare FIDs only at
the same sample count, which `metrics.json` records.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Optional

import numpy as np

BIENCODER = "biencoder"
VQGAN = "vqgan"
INCEPTION = "inception"


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean [d], covariance [d, d]) of features [n, d] (n >= 2; float64)."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"FID needs features [n >= 2, d], got shape {features.shape}")
    return features.mean(0), np.cov(features, rowvar=False).reshape(features.shape[1],
                                                                    features.shape[1])


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((sigma1 sigma2)^½) for symmetric PSD matrices (see the module docstring)."""
    root = _psd_sqrt(np.asarray(sigma1, np.float64))
    inner = root @ np.asarray(sigma2, np.float64) @ root
    values = np.linalg.eigvalsh((inner + inner.T) / 2)
    return float(np.sqrt(np.clip(values, 0.0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
    """Squared Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(
        np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or \
            sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"mismatched statistics: means {mu1.shape} / {mu2.shape}, covariances "
                         f"{sigma1.shape} / {sigma2.shape}")
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt_product(sigma1,
                                                                                        sigma2)
    return float(max(value, 0.0))  # rounding can leave -1e-12 for identical inputs


def fid(features1: np.ndarray, features2: np.ndarray) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets [n, d]."""
    return frechet_distance(*statistics(features1), *statistics(features2))


@dataclasses.dataclass
class FeatureExtractor:
    """uint8 images [n, H, W, 3] -> float32 features [n, d]; `name` says which encoder."""

    name: str
    describe: str
    function: Callable[[np.ndarray], np.ndarray]
    batch_size: int = 64

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, np.uint8)
        out = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            padded = np.concatenate([chunk, np.repeat(chunk[:1], self.batch_size - len(chunk),
                                                      0)]) if len(chunk) < self.batch_size \
                else chunk  # one shape, one compilation
            out.append(np.asarray(self.function(padded), np.float32)[:len(chunk)])
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def biencoder_features(biencoder, batch_size: int = 64) -> FeatureExtractor:
    """The bi-encoder's pooled image-tower state (before projection / normalisation)."""
    import jax  # noqa: PLC0415

    from cm3leon_jax.retrieval import encoder  # noqa: PLC0415

    arch = biencoder.arch

    @jax.jit
    def pooled(params, images):
        pixels = encoder.preprocess_images(images, arch.image_size)
        return biencoder.model.apply({"params": params}, pixels,
                                     method=lambda model, x: model.vision_model(x))

    return FeatureExtractor(
        BIENCODER, f"retrieval bi-encoder image tower, pooled {arch.vision_width}-d state "
        f"({biencoder.model_id})", lambda images: pooled(biencoder.params, images), batch_size)


def vqgan_features(image_tokenizer, batch_size: int = 64) -> FeatureExtractor:
    """The VQ-GAN encoder's pre-quantisation latents, averaged over the spatial grid."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    from cm3leon_jax.tokenizers import losses  # noqa: PLC0415

    model = image_tokenizer.model

    @jax.jit
    def pooled(variables, images):
        latents = model.apply(variables, losses.to_model_range(images),
                              method=lambda m, x: m.encoder(x))
        return jnp.mean(latents, axis=(1, 2))

    return FeatureExtractor(
        VQGAN, f"VQ-GAN encoder latents, spatial mean ({image_tokenizer.config.code_dim}-d; "
        "fallback: no trained retrieval encoder)",
        lambda images: pooled(image_tokenizer.variables, images), batch_size)


def inception_features(weights: str, batch_size: int = 16) -> FeatureExtractor:
    """FID's own Inception-v3 pool3 from the user's weights file (`inception.py`)."""
    import jax  # noqa: PLC0415

    from cm3leon_jax.evaluation import inception  # noqa: PLC0415

    params = inception.load_params(weights)
    pool3 = jax.jit(inception.pool3)
    return FeatureExtractor(
        INCEPTION, f"FID Inception-v3 pool3, 2,048-d (TensorFlow's FID graph; weights "
        f"{os.path.abspath(weights)}): comparable with published FID at the same sample count",
        lambda images: pool3(params, images), batch_size)


def feature_extractor(biencoder: Optional[object], image_tokenizer, batch_size: int = 64,
                      inception_weights: str = "") -> FeatureExtractor:
    """FID Inception when its weights are given, else the bi-encoder's image tower when there
    is one, else the VQ-GAN fallback."""
    if inception_weights:
        return inception_features(inception_weights, min(batch_size, 16))
    if biencoder is not None:
        return biencoder_features(biencoder, batch_size)
    return vqgan_features(image_tokenizer, batch_size)
