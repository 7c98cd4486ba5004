"""Full-reference image quality: PSNR, SSIM and the bicubic baseline (numpy, per image).

    psnr(a, b)   # float64 [N] in dB, uint8 images [N, H, W, 3] (or one [H, W, 3])
    ssim(a, b)   # float64 [N] in [-1, 1]
    bicubic(images, size)  # uint8 [N, size, size, 3] (PIL bicubic, the baseline every
                           # super-resolution figure is reported next to)

SSIM is Wang et al. (2004) with the usual constants: a Gaussian window of sigma 1.5 (truncated at
3.5 sigma, 11 pixels wide), K1 = 0.01, K2 = 0.03, data range 255, population (not sample)
covariances, computed per channel on the image reflected at its borders, then averaged over the
pixels at least 5 away from the border (the window's radius) and over the channels. These are
scikit-image's `structural_similarity(..., gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=255, channel_axis=-1)` settings, the de-facto reference;
scikit-image is not a dependency here, so tests check the closed form instead (identical images
give 1; two constant images a and b give (2ab + C1) / (a^2 + b^2 + C1)).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

K1, K2, SIGMA, TRUNCATE, DATA_RANGE = 0.01, 0.03, 1.5, 3.5, 255.0


def _batch(images) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected RGB images [N, H, W, 3] (or one [H, W, 3]), got shape "
                         f"{images.shape}")
    return images.astype(np.float64)


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = _batch(a), _batch(b)
    if a.shape != b.shape:
        raise ValueError(f"images to compare must have the same shape, got {a.shape} and "
                         f"{b.shape}")
    return a, b


def psnr(a, b) -> np.ndarray:
    """Peak signal-to-noise ratio in dB per image (identical images: inf)."""
    a, b = _pair(a, b)
    mse = np.mean(np.square(a - b), axis=(1, 2, 3))
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(DATA_RANGE ** 2 / mse)


def _blur(x: np.ndarray) -> np.ndarray:
    """Gaussian filter over H and W of [N, H, W, C] (not across images or channels)."""
    return ndimage.gaussian_filter(x, sigma=(0, SIGMA, SIGMA, 0), truncate=TRUNCATE,
                                   mode="reflect")


def ssim(a, b) -> np.ndarray:
    """Mean structural similarity per image (see the module docstring for the exact settings)."""
    a, b = _pair(a, b)
    radius = int(TRUNCATE * SIGMA + 0.5)
    if min(a.shape[1:3]) <= 2 * radius:
        raise ValueError(f"SSIM needs images larger than {2 * radius + 1} pixels, got "
                         f"{a.shape[1]}x{a.shape[2]}")
    c1, c2 = (K1 * DATA_RANGE) ** 2, (K2 * DATA_RANGE) ** 2
    mu_a, mu_b = _blur(a), _blur(b)
    var_a = _blur(a * a) - mu_a * mu_a
    var_b = _blur(b * b) - mu_b * mu_b
    cov = _blur(a * b) - mu_a * mu_b
    numerator = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    denominator = (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    ssim_map = numerator / denominator
    inner = ssim_map[:, radius:-radius, radius:-radius, :]
    return inner.mean(axis=(1, 2, 3))


def bicubic(images, size: int) -> np.ndarray:
    """uint8 [N, size, size, 3]: each image resized with PIL's bicubic filter."""
    from PIL import Image  # noqa: PLC0415

    images = np.asarray(images, np.uint8)
    if images.ndim == 3:
        images = images[None]
    return np.stack([np.asarray(Image.fromarray(image).resize((size, size),
                                                              Image.Resampling.BICUBIC), np.uint8)
                     for image in images])
