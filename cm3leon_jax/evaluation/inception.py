"""Standard FID features: the TensorFlow FID Inception-v3 in JAX, from the weights file a user has.

    params = load_params("pt_inception-2015-12-05-6726825d.pth")    # or an .npz of it
    features = pool3(params, images)   # uint8 [N, H, W, 3] -> float32 [N, 2048]
    fid.inception_features(path)       # the same as a FID feature extractor (`evaluate`)

FID is comparable across papers only with one network: the Inception-v3 graph of TensorFlow's FID
code (2015-12-05 weights), which `pytorch-fid` ships as a PyTorch state dict. Nothing may be
downloaded here, so the user passes that file (`evaluate --fid_weights PATH`). This module reads
it (a `.pth` through torch when installed, or an `.npz` of the same keys and arrays) and runs the
network in JAX, with pytorch-fid's choices:

* input: pixels / 255, resized to 299x299 by bilinear interpolation with half-pixel centres and
  no antialiasing (`F.interpolate(mode="bilinear", align_corners=False)`), then scaled to [-1, 1];
* every convolution without bias, then BatchNorm with the stored statistics (eps 0.001), ReLU;
* the FID variant of the blocks: average pools inside Mixed_5*, 6b-6e and 7b leave the zero
  padding out of the mean; Mixed_7c pools its last branch with a max pool;
* output: the 2,048 activations after the global average pool (pool3).

The layer table `LAYERS` is the state dict's contract: key prefixes, channel counts, kernel
sizes, strides and paddings. Checked against pytorch-fid 0.3.0's own model on one random state
dict (docs/BENCHMARKS.md, "Standard FID features"); tests/unit/evaluation/test_fid_inception.py
checks the file format, shapes and preprocessing against torch on every run.
"""

from __future__ import annotations

import functools
import os
from typing import Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

SIZE = 299
FEATURES = 2048
BN_EPS = 1e-3
FILE_NAME = "pt_inception-2015-12-05-6726825d.pth"  # pytorch-fid's FID_WEIGHTS_URL file name


class Conv(NamedTuple):
    name: str          # state-dict prefix: <name>.conv.weight, <name>.bn.{weight,bias,running_*}
    cin: int
    cout: int
    kernel: tuple[int, int]
    stride: int = 1
    padding: tuple[int, int] = (0, 0)


def _stem() -> list[Conv]:
    return [Conv("Conv2d_1a_3x3", 3, 32, (3, 3), 2), Conv("Conv2d_2a_3x3", 32, 32, (3, 3)),
            Conv("Conv2d_2b_3x3", 32, 64, (3, 3), 1, (1, 1)), Conv("Conv2d_3b_1x1", 64, 80, (1, 1)),
            Conv("Conv2d_4a_3x3", 80, 192, (3, 3))]


def _block_a(name: str, cin: int, pool: int) -> list[Conv]:
    return [Conv(f"{name}.branch1x1", cin, 64, (1, 1)),
            Conv(f"{name}.branch5x5_1", cin, 48, (1, 1)),
            Conv(f"{name}.branch5x5_2", 48, 64, (5, 5), 1, (2, 2)),
            Conv(f"{name}.branch3x3dbl_1", cin, 64, (1, 1)),
            Conv(f"{name}.branch3x3dbl_2", 64, 96, (3, 3), 1, (1, 1)),
            Conv(f"{name}.branch3x3dbl_3", 96, 96, (3, 3), 1, (1, 1)),
            Conv(f"{name}.branch_pool", cin, pool, (1, 1))]


def _block_b(name: str, cin: int) -> list[Conv]:
    return [Conv(f"{name}.branch3x3", cin, 384, (3, 3), 2),
            Conv(f"{name}.branch3x3dbl_1", cin, 64, (1, 1)),
            Conv(f"{name}.branch3x3dbl_2", 64, 96, (3, 3), 1, (1, 1)),
            Conv(f"{name}.branch3x3dbl_3", 96, 96, (3, 3), 2)]


def _block_c(name: str, c7: int) -> list[Conv]:
    row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))
    return [Conv(f"{name}.branch1x1", 768, 192, (1, 1)),
            Conv(f"{name}.branch7x7_1", 768, c7, (1, 1)),
            Conv(f"{name}.branch7x7_2", c7, c7, row[0], 1, row[1]),
            Conv(f"{name}.branch7x7_3", c7, 192, col[0], 1, col[1]),
            Conv(f"{name}.branch7x7dbl_1", 768, c7, (1, 1)),
            Conv(f"{name}.branch7x7dbl_2", c7, c7, col[0], 1, col[1]),
            Conv(f"{name}.branch7x7dbl_3", c7, c7, row[0], 1, row[1]),
            Conv(f"{name}.branch7x7dbl_4", c7, c7, col[0], 1, col[1]),
            Conv(f"{name}.branch7x7dbl_5", c7, 192, row[0], 1, row[1]),
            Conv(f"{name}.branch_pool", 768, 192, (1, 1))]


def _block_d(name: str) -> list[Conv]:
    return [Conv(f"{name}.branch3x3_1", 768, 192, (1, 1)),
            Conv(f"{name}.branch3x3_2", 192, 320, (3, 3), 2),
            Conv(f"{name}.branch7x7x3_1", 768, 192, (1, 1)),
            Conv(f"{name}.branch7x7x3_2", 192, 192, (1, 7), 1, (0, 3)),
            Conv(f"{name}.branch7x7x3_3", 192, 192, (7, 1), 1, (3, 0)),
            Conv(f"{name}.branch7x7x3_4", 192, 192, (3, 3), 2)]


def _block_e(name: str, cin: int) -> list[Conv]:
    return [Conv(f"{name}.branch1x1", cin, 320, (1, 1)),
            Conv(f"{name}.branch3x3_1", cin, 384, (1, 1)),
            Conv(f"{name}.branch3x3_2a", 384, 384, (1, 3), 1, (0, 1)),
            Conv(f"{name}.branch3x3_2b", 384, 384, (3, 1), 1, (1, 0)),
            Conv(f"{name}.branch3x3dbl_1", cin, 448, (1, 1)),
            Conv(f"{name}.branch3x3dbl_2", 448, 384, (3, 3), 1, (1, 1)),
            Conv(f"{name}.branch3x3dbl_3a", 384, 384, (1, 3), 1, (0, 1)),
            Conv(f"{name}.branch3x3dbl_3b", 384, 384, (3, 1), 1, (1, 0)),
            Conv(f"{name}.branch_pool", cin, 192, (1, 1))]


LAYERS: tuple[Conv, ...] = tuple(
    _stem() + _block_a("Mixed_5b", 192, 32) + _block_a("Mixed_5c", 256, 64)
    + _block_a("Mixed_5d", 288, 64) + _block_b("Mixed_6a", 288)
    + _block_c("Mixed_6b", 128) + _block_c("Mixed_6c", 160) + _block_c("Mixed_6d", 160)
    + _block_c("Mixed_6e", 192) + _block_d("Mixed_7a") + _block_e("Mixed_7b", 1280)
    + _block_e("Mixed_7c", 2048))
BN_KEYS = ("weight", "bias", "running_mean", "running_var")


def expected_shapes() -> dict[str, tuple[int, ...]]:
    """Every tensor pool3 needs, by state-dict key (the file also holds the 1,008-way `fc` head
    and, from newer PyTorch, `num_batches_tracked` counters: both read past)."""
    shapes = {}
    for layer in LAYERS:
        shapes[f"{layer.name}.conv.weight"] = (layer.cout, layer.cin, *layer.kernel)
        for key in BN_KEYS:
            shapes[f"{layer.name}.bn.{key}"] = (layer.cout,)
    return shapes


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """The weights file as numpy arrays: pytorch-fid's `.pth` (needs torch) or an `.npz`."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"FID Inception weights {path!r}: no such file (pytorch-fid's "
                                f"{FILE_NAME}, or an .npz of its tensors)")
    if path.endswith(".npz"):
        with np.load(path) as data:
            return {key: data[key] for key in data.files}
    try:
        import torch  # noqa: PLC0415 - only to read a torch file
    except ImportError as error:
        raise ImportError(f"reading {path} needs torch (pip install torch==2.13.0), or convert "
                          "it once to .npz with numpy.savez") from error
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {key: value.numpy() for key, value in state.items()}


def check_state_dict(state: Mapping[str, np.ndarray], source: str = "state dict") -> None:
    """ValueError naming the first missing key or wrong shape."""
    for key, shape in expected_shapes().items():
        if key not in state:
            raise ValueError(f"{source}: no {key!r}; not a FID Inception-v3 state dict "
                             f"(pytorch-fid's {FILE_NAME})")
        if tuple(state[key].shape) != shape:
            raise ValueError(f"{source}: {key!r} has shape {tuple(state[key].shape)}, expected "
                             f"{shape}")


def resize_bilinear(images: jax.Array, size: int = SIZE) -> jax.Array:
    """float [N, H, W, C] -> [N, size, size, C]: torch's bilinear with align_corners=False and no
    antialiasing (source coordinate (i + 0.5) * in / out - 0.5, clamped at 0)."""

    def axis_weights(length: int):
        source = (jnp.arange(size, dtype=jnp.float32) + 0.5) * (length / size) - 0.5
        source = jnp.maximum(source, 0.0)
        low = jnp.minimum(jnp.floor(source).astype(jnp.int32), length - 1)
        high = jnp.minimum(low + 1, length - 1)
        return low, high, source - low

    y0, y1, wy = axis_weights(images.shape[1])
    x0, x1, wx = axis_weights(images.shape[2])
    rows = (images[:, y0] * (1 - wy)[None, :, None, None]
            + images[:, y1] * wy[None, :, None, None])
    return rows[:, :, x0] * (1 - wx)[None, None, :, None] + rows[:, :, x1] * wx[None, None, :, None]


def preprocess(images: jax.Array) -> jax.Array:
    """uint8 [N, H, W, 3] -> float32 [N, 299, 299, 3] in [-1, 1] (pytorch-fid's input)."""
    x = images.astype(jnp.float32) / 255.0
    return 2.0 * resize_bilinear(x) - 1.0


def _conv_bn_relu(params: dict, layer: Conv, x: jax.Array) -> jax.Array:
    p = params[layer.name]
    y = jax.lax.conv_general_dilated(
        x, p["kernel"], (layer.stride, layer.stride),
        [(layer.padding[0], layer.padding[0]), (layer.padding[1], layer.padding[1])],
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=jax.lax.Precision.HIGHEST)
    return jax.nn.relu(y * p["scale"] + p["shift"])


def _max_pool(x: jax.Array, stride: int, padding: int = 0) -> jax.Array:
    pad = [(0, 0), (padding, padding), (padding, padding), (0, 0)]
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, stride, stride, 1),
                                 pad)


def _avg_pool_without_padding(x: jax.Array) -> jax.Array:
    """3x3, stride 1, padding 1, the padded zeros left out of each mean (TensorFlow's pool)."""
    pad = [(0, 0), (1, 1), (1, 1), (0, 0)]
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pad)
    count = jax.lax.reduce_window(jnp.ones((1, *x.shape[1:3], 1), x.dtype), 0.0, jax.lax.add,
                                  (1, 3, 3, 1), (1, 1, 1, 1), pad)
    return total / count


def pool3(params: dict, images: jax.Array) -> jax.Array:
    """uint8 images [N, H, W, 3] -> float32 pool3 features [N, 2048]."""
    layers = {layer.name: layer for layer in LAYERS}

    def conv(name: str, x: jax.Array) -> jax.Array:
        return _conv_bn_relu(params, layers[name], x)

    def chain(names: list[str], x: jax.Array) -> jax.Array:
        for name in names:
            x = conv(name, x)
        return x

    x = preprocess(images)
    x = chain(["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"], x)
    x = _max_pool(x, 2)
    x = chain(["Conv2d_3b_1x1", "Conv2d_4a_3x3"], x)
    x = _max_pool(x, 2)
    for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
        x = jnp.concatenate([
            conv(f"{name}.branch1x1", x),
            chain([f"{name}.branch5x5_1", f"{name}.branch5x5_2"], x),
            chain([f"{name}.branch3x3dbl_{i}" for i in (1, 2, 3)], x),
            conv(f"{name}.branch_pool", _avg_pool_without_padding(x))], axis=-1)
    x = jnp.concatenate([
        conv("Mixed_6a.branch3x3", x),
        chain([f"Mixed_6a.branch3x3dbl_{i}" for i in (1, 2, 3)], x),
        _max_pool(x, 2)], axis=-1)
    for name in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
        x = jnp.concatenate([
            conv(f"{name}.branch1x1", x),
            chain([f"{name}.branch7x7_{i}" for i in (1, 2, 3)], x),
            chain([f"{name}.branch7x7dbl_{i}" for i in (1, 2, 3, 4, 5)], x),
            conv(f"{name}.branch_pool", _avg_pool_without_padding(x))], axis=-1)
    x = jnp.concatenate([
        chain(["Mixed_7a.branch3x3_1", "Mixed_7a.branch3x3_2"], x),
        chain([f"Mixed_7a.branch7x7x3_{i}" for i in (1, 2, 3, 4)], x),
        _max_pool(x, 2)], axis=-1)
    for name, pool in (("Mixed_7b", _avg_pool_without_padding),
                       ("Mixed_7c", functools.partial(_max_pool, stride=1, padding=1))):
        branch3x3 = conv(f"{name}.branch3x3_1", x)
        double = chain([f"{name}.branch3x3dbl_1", f"{name}.branch3x3dbl_2"], x)
        x = jnp.concatenate([
            conv(f"{name}.branch1x1", x),
            conv(f"{name}.branch3x3_2a", branch3x3), conv(f"{name}.branch3x3_2b", branch3x3),
            conv(f"{name}.branch3x3dbl_3a", double), conv(f"{name}.branch3x3dbl_3b", double),
            conv(f"{name}.branch_pool", pool(x))], axis=-1)
    return x.mean(axis=(1, 2))


def params_from_state_dict(state: Mapping[str, np.ndarray]) -> dict:
    """Per layer: HWIO kernel and BatchNorm folded into scale and shift (inference)."""
    check_state_dict(state)
    params = {}
    for layer in LAYERS:
        weight = np.asarray(state[f"{layer.name}.conv.weight"], np.float32)
        gamma, beta, mean, var = (np.asarray(state[f"{layer.name}.bn.{k}"], np.float32)
                                  for k in BN_KEYS)
        scale = gamma / np.sqrt(var + BN_EPS)
        params[layer.name] = {"kernel": jnp.asarray(weight.transpose(2, 3, 1, 0)),
                              "scale": jnp.asarray(scale),
                              "shift": jnp.asarray(beta - mean * scale)}
    return params


def load_params(path: str) -> dict:
    """The weights file (`read_state_dict`), checked and converted for `pool3`."""
    state = read_state_dict(path)
    check_state_dict(state, path)
    return params_from_state_dict(state)
