"""The stable image-tokenizer API every later stage uses: uint8 images <-> int32 code grids.

    tokenizer = ImageTokenizer.load("<vqgan workdir>/image_tokenizer")
    codes = tokenizer.encode(images)        # uint8 [B, H, W, 3] -> int32 [B, h, w]
    images = tokenizer.decode(codes)        # int [B, h, w] -> uint8 [B, H, W, 3]

An exported tokenizer is a directory with `config.json` (the `vqgan` config section) and
`variables.msgpack` (parameters and quantizer state, flax msgpack); `train_vqgan` writes it at the
end of training. Both calls are jit-compiled once for a fixed batch (`batch_size`); inputs are cut
into batches and the last one is zero-padded, so any number of images costs no recompilation.
Inputs are checked before anything runs: a wrong dtype, size or channel count is a ValueError
saying what was expected.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any, Mapping

from etils import epath
import flax.serialization
import jax
import numpy as np

from cm3leon_jax import config as config_lib
from cm3leon_jax.config import VQGANConfig
from cm3leon_jax.tokenizers import losses
from cm3leon_jax.tokenizers.vqgan import VQGAN

CONFIG_FILE = "config.json"
VARIABLES_FILE = "variables.msgpack"
EXPORT_DIR = "image_tokenizer"  # the export's name inside a train_vqgan workdir


def _encode_uint8(model: VQGAN, variables: Mapping[str, Any], images: jax.Array) -> jax.Array:
    return model.apply(variables, losses.to_model_range(images), method=VQGAN.encode)


def _decode_uint8(model: VQGAN, variables: Mapping[str, Any], codes: jax.Array) -> jax.Array:
    return losses.to_uint8(model.apply(variables, codes, method=VQGAN.decode))


class ImageTokenizer:
    """A trained VQ-GAN behind a numpy-in, numpy-out interface."""

    def __init__(self, config: VQGANConfig, variables: Mapping[str, Any], batch_size: int = 64):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.config = config
        self.batch_size = batch_size
        self.model = VQGAN(config)
        self.variables = jax.device_put(jax.tree.map(np.asarray, dict(variables)))
        self._encode = jax.jit(functools.partial(_encode_uint8, self.model))
        self._decode = jax.jit(functools.partial(_decode_uint8, self.model))

    # ---------------------------------------------------------------------------------- files --

    @classmethod
    def load(cls, path: str | epath.Path, batch_size: int = 64) -> "ImageTokenizer":
        """Loads an export directory, or the export inside a `train_vqgan` workdir."""
        path = resolve(path)
        config = read_config(path)
        variables = flax.serialization.msgpack_restore((path / VARIABLES_FILE).read_bytes())
        return cls(config, variables, batch_size)

    def save(self, path: str | epath.Path) -> epath.Path:
        path = epath.Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_FILE).write_text(
            json.dumps(dataclasses.asdict(self.config), indent=2, sort_keys=True) + "\n")
        host = jax.tree.map(np.asarray, self.variables)
        (path / VARIABLES_FILE).write_bytes(flax.serialization.msgpack_serialize(host))
        return path

    # ------------------------------------------------------------------------------ properties --

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def code_shape(self) -> tuple[int, int]:
        """(h, w) of one image's code grid."""
        return (self.config.code_grid_size, self.config.code_grid_size)

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    # ------------------------------------------------------------------------------- encoding --

    def _check_images(self, images: Any) -> np.ndarray:
        images = np.asarray(images)
        expected = f"[B, {self.image_size}, {self.image_size}, 3]"
        if images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 in [0, 255] {expected}, got dtype "
                             f"{images.dtype} (convert with np.clip(x, 0, 255).astype(np.uint8))")
        if images.ndim != 4:
            raise ValueError(f"images must be a batch {expected}, got shape {images.shape}"
                             + (" (for one image use images[None])" if images.ndim == 3 else ""))
        if images.shape[-1] != 3:
            raise ValueError(f"images must have 3 (RGB) channels {expected}, got "
                             f"{images.shape[-1]} channels (shape {images.shape})")
        if images.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(f"this tokenizer reads {self.image_size}x{self.image_size} images "
                             f"{expected}, got {images.shape[1]}x{images.shape[2]} "
                             f"(shape {images.shape})")
        return images

    def _check_codes(self, codes: Any) -> np.ndarray:
        codes = np.asarray(codes)
        h, w = self.code_shape
        if not np.issubdtype(codes.dtype, np.integer):
            raise ValueError(f"codes must be integers [B, {h}, {w}], got dtype {codes.dtype}")
        if codes.ndim != 3 or codes.shape[1:] != (h, w):
            raise ValueError(f"codes must have shape [B, {h}, {w}], got {codes.shape}")
        if codes.size and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(f"codes must be in [0, {self.codebook_size}), got values in "
                             f"[{codes.min()}, {codes.max()}]")
        return codes.astype(np.int32)

    def _batched(self, function, inputs: np.ndarray, output_tail: tuple[int, ...],
                 output_dtype: np.dtype) -> np.ndarray:
        count = inputs.shape[0]
        outputs = np.empty((count, *output_tail), output_dtype)
        for start in range(0, count, self.batch_size):
            chunk = inputs[start:start + self.batch_size]
            size = chunk.shape[0]
            if size < self.batch_size:
                padding = np.zeros((self.batch_size - size, *chunk.shape[1:]), chunk.dtype)
                chunk = np.concatenate([chunk, padding])
            outputs[start:start + size] = np.asarray(function(self.variables, chunk))[:size]
        return outputs

    def encode(self, images: Any) -> np.ndarray:
        """uint8 images [B, H, W, 3] -> int32 codes [B, h, w]."""
        images = self._check_images(images)
        return self._batched(self._encode, images, self.code_shape, np.int32)

    def decode(self, codes: Any) -> np.ndarray:
        """int codes [B, h, w] in [0, codebook_size) -> uint8 images [B, H, W, 3]."""
        codes = self._check_codes(codes)
        return self._batched(self._decode, codes, (self.image_size, self.image_size, 3), np.uint8)

    def reconstruct(self, images: Any) -> np.ndarray:
        """decode(encode(images)): what the tokenizer keeps of each image."""
        return self.decode(self.encode(images))


def resolve(path: str | epath.Path) -> epath.Path:
    """The export directory for `path` (an export, or a train_vqgan workdir holding one)."""
    path = epath.Path(path)
    if not (path / CONFIG_FILE).exists() and (path / EXPORT_DIR / CONFIG_FILE).exists():
        path = path / EXPORT_DIR
    if not (path / CONFIG_FILE).exists() or not (path / VARIABLES_FILE).exists():
        raise FileNotFoundError(
            f"{path} holds no image tokenizer: expected {CONFIG_FILE} and {VARIABLES_FILE} "
            f"(written by `python -m cm3leon_jax.tokenizers.train_vqgan` into "
            f"<workdir>/{EXPORT_DIR})")
    return path


def read_config(path: str | epath.Path) -> VQGANConfig:
    """The `vqgan` config of an export (sizes of its code grid and codebook), without weights."""
    raw = json.loads((resolve(path) / CONFIG_FILE).read_text())
    return config_lib.from_dict(raw, VQGANConfig, prefix="vqgan")
