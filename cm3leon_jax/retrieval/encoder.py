"""The retriever's bi-encoder: Hugging Face `CLIPModel`'s architecture in Flax (linen).

Two towers project into one embedding space:

* text: token + learned position embeddings, pre-LayerNorm transformer with a causal mask,
  final LayerNorm, pooled at the (first) EOS token, linear projection without bias;
* image: ViT — patch convolution without bias, a class token, learned position embeddings, a
  LayerNorm *before* the transformer (`pre_layrnorm`, HF's spelling), the class token's output
  through `post_layernorm`, linear projection without bias.

Blocks are `x + attn(ln1(x))`, `x + mlp(ln2(x))` with biased q/k/v/out and fc1/fc2 and the
activation of the config (`quick_gelu` as in OpenAI CLIP, or exact / tanh GELU). Parameter names
mirror HF's state dict (`text_model.encoder.layers.0.self_attn.q_proj.weight` is
`params["text_model"]["encoder"]["layers_0"]["self_attn"]["q_proj"]["kernel"]`, transposed), which
is what lets `load_hf_clip(directory)` import any local HF CLIP checkpoint (safetensors or torch)
and reproduce `CLIPModel.get_text_features` / `get_image_features` to float32 rounding.

Our own encoder (trained by `train_encoder.py`) reads captions with the self-contained byte
tokenizer of `byte_tokenizer.py` (BOS + UTF-8 bytes + EOS, so retrieval does not depend on the BPE
tokenizer of the text stage) and images as uint8 RGB normalised with OpenAI CLIP's mean and standard deviation.

Document embeddings (`combine_modalities`): a multimodal document's embedding is the mean of its
L2-normalised text and image embeddings, L2-normalised again so that every score in the memory bank
is a cosine similarity in [-1, 1] (which the relevance and diversity thresholds assume). A document
with one modality is that modality's normalised embedding.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Callable, Mapping, Optional

import flax.linen as nn
from etils import epath
import jax
import jax.numpy as jnp
import numpy as np

from cm3leon_jax import paths
from cm3leon_jax.config import RetrievalConfig, fail
from cm3leon_jax.retrieval import byte_tokenizer

Params = Mapping[str, Any]

# OpenAI CLIP's image normalisation (what HF's CLIPImageProcessor uses).
CLIP_IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
ARCHITECTURE_FILE = "architecture.json"
CHECKPOINT_SUBDIR = paths.CHECKPOINTS


# --------------------------------------------------------------------------------------------------
# Architecture
# --------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Tower:
    """Sizes of one transformer tower (text or vision)."""

    width: int
    heads: int
    mlp_dim: int
    layers: int
    activation: str
    layer_norm_eps: float


@dataclasses.dataclass(frozen=True)
class ClipArchitecture:
    """Every size of a CLIP bi-encoder (HF `CLIPConfig` fields, flattened; defaults are HF's)."""

    text_vocab_size: int = 49408
    text_max_length: int = 77  # HF max_position_embeddings
    text_width: int = 512
    text_layers: int = 12
    text_heads: int = 8
    text_mlp_dim: int = 2048
    text_activation: str = "quick_gelu"
    text_layer_norm_eps: float = 1e-5
    eos_token_id: int = 49407  # HF's legacy value 2 means "pool at the largest id" (old configs)
    image_size: int = 224
    patch_size: int = 32
    num_channels: int = 3
    vision_width: int = 768
    vision_layers: int = 12
    vision_heads: int = 12
    vision_mlp_dim: int = 3072
    vision_activation: str = "quick_gelu"
    vision_layer_norm_eps: float = 1e-5
    projection_dim: int = 512
    logit_scale_init: float = 2.6592  # log(1 / 0.07)

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def text_tower(self) -> "Tower":
        return Tower(self.text_width, self.text_heads, self.text_mlp_dim, self.text_layers,
                     self.text_activation, self.text_layer_norm_eps)

    @property
    def vision_tower(self) -> "Tower":
        return Tower(self.vision_width, self.vision_heads, self.vision_mlp_dim, self.vision_layers,
                     self.vision_activation, self.vision_layer_norm_eps)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ClipArchitecture":
        raw = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown ClipArchitecture field(s) {', '.join(unknown)}")
        return cls(**raw)


def architecture_for(retrieval: RetrievalConfig, image_size: int) -> ClipArchitecture:
    """Our byte-level encoder's architecture from `config.retrieval` and the data's image size."""
    if image_size % retrieval.patch_size:
        fail("retrieval.patch_size", retrieval.patch_size,
             f"must divide config.data.image_size={image_size}")
    return ClipArchitecture(
        text_vocab_size=byte_tokenizer.VOCAB_SIZE, text_max_length=retrieval.text_max_length,
        text_width=retrieval.text_width, text_layers=retrieval.text_layers,
        text_heads=retrieval.text_heads, text_mlp_dim=retrieval.mlp_ratio * retrieval.text_width,
        text_activation=retrieval.activation, eos_token_id=byte_tokenizer.EOS_ID,
        image_size=image_size, patch_size=retrieval.patch_size,
        vision_width=retrieval.vision_width, vision_layers=retrieval.vision_layers,
        vision_heads=retrieval.vision_heads,
        vision_mlp_dim=retrieval.mlp_ratio * retrieval.vision_width,
        vision_activation=retrieval.activation, projection_dim=retrieval.projection_dim)


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """HF `hidden_act` names used by CLIP checkpoints."""
    if name == "quick_gelu":
        return lambda x: x * jax.nn.sigmoid(1.702 * x)
    if name == "gelu":
        return lambda x: jax.nn.gelu(x, approximate=False)
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: jax.nn.gelu(x, approximate=True)
    raise ValueError(f"unsupported activation {name!r}; supported: quick_gelu, gelu, gelu_new, "
                     "gelu_pytorch_tanh")


# --------------------------------------------------------------------------------------------------
# Modules (names mirror the HF state dict)
# --------------------------------------------------------------------------------------------------

def _normal(std: float) -> Callable:
    return nn.initializers.normal(stddev=std)


def _layer_norm(eps: float, name: str) -> nn.LayerNorm:
    # use_fast_variance=False: E[(x-mean)^2] as torch computes it, not E[x^2] - mean^2.
    return nn.LayerNorm(epsilon=eps, use_fast_variance=False, name=name)


class Attention(nn.Module):
    tower: Tower

    @nn.compact
    def __call__(self, x: jax.Array, mask: Optional[jax.Array]) -> jax.Array:
        batch, length, _ = x.shape
        width, heads = self.tower.width, self.tower.heads
        head_dim = width // heads
        in_std = width ** -0.5 * (2 * self.tower.layers) ** -0.5

        def project(name: str, std: float) -> nn.Dense:
            return nn.Dense(width, kernel_init=_normal(std), name=name)

        split = lambda t: t.reshape(batch, length, heads, head_dim)
        q = split(project("q_proj", in_std)(x))
        k = split(project("k_proj", in_std)(x))
        v = split(project("v_proj", in_std)(x))
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * head_dim ** -0.5
        if mask is not None:
            logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(x.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, length, width)
        return project("out_proj", width ** -0.5)(out)


class Mlp(nn.Module):
    tower: Tower

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = self.tower.width
        x = nn.Dense(self.tower.mlp_dim, kernel_init=_normal((2 * width) ** -0.5), name="fc1")(x)
        x = activation(self.tower.activation)(x)
        fc2_std = width ** -0.5 * (2 * self.tower.layers) ** -0.5
        return nn.Dense(width, kernel_init=_normal(fc2_std), name="fc2")(x)


class EncoderLayer(nn.Module):
    tower: Tower

    @nn.compact
    def __call__(self, x: jax.Array, mask: Optional[jax.Array]) -> jax.Array:
        eps = self.tower.layer_norm_eps
        x = x + Attention(self.tower, name="self_attn")(_layer_norm(eps, "layer_norm1")(x), mask)
        return x + Mlp(self.tower, name="mlp")(_layer_norm(eps, "layer_norm2")(x))


class Encoder(nn.Module):
    tower: Tower

    @nn.compact
    def __call__(self, x: jax.Array, mask: Optional[jax.Array]) -> jax.Array:
        for index in range(self.tower.layers):
            x = EncoderLayer(self.tower, name=f"layers_{index}")(x, mask)
        return x


class TextEmbeddings(nn.Module):
    vocab_size: int
    max_length: int
    width: int

    @nn.compact
    def __call__(self, token_ids: jax.Array) -> jax.Array:
        length = token_ids.shape[-1]
        if length > self.max_length:
            raise ValueError(f"text of {length} tokens exceeds the model's {self.max_length}")
        tokens = nn.Embed(self.vocab_size, self.width, embedding_init=_normal(0.02),
                          name="token_embedding")(token_ids)
        positions = nn.Embed(self.max_length, self.width, embedding_init=_normal(0.02),
                             name="position_embedding")(jnp.arange(length))
        return tokens + positions[None]


class TextTransformer(nn.Module):
    arch: ClipArchitecture

    @nn.compact
    def __call__(self, token_ids: jax.Array, attention_mask: Optional[jax.Array] = None
                 ) -> jax.Array:
        """Pooled (EOS) hidden state [batch, text_width]; `attention_mask` [batch, length], 1 =
        real token (padding after EOS needs none: the causal mask already hides it from EOS)."""
        a = self.arch
        x = TextEmbeddings(a.text_vocab_size, a.text_max_length, a.text_width,
                           name="embeddings")(token_ids)
        length = token_ids.shape[-1]
        mask = jnp.tril(jnp.ones((length, length), bool))[None, None]
        if attention_mask is not None:
            mask = mask & attention_mask.astype(bool)[:, None, None, :]
        x = Encoder(a.text_tower, name="encoder")(x, mask)
        x = _layer_norm(a.text_layer_norm_eps, "final_layer_norm")(x)
        if a.eos_token_id == 2:  # HF's legacy rule for old configs: the largest id is EOS
            pool_at = jnp.argmax(token_ids, axis=-1)
        else:  # first EOS (padding may reuse the EOS id)
            pool_at = jnp.argmax(token_ids == a.eos_token_id, axis=-1)
        return jnp.take_along_axis(x, pool_at[:, None, None], axis=1)[:, 0]


class VisionEmbeddings(nn.Module):
    arch: ClipArchitecture

    @nn.compact
    def __call__(self, pixels: jax.Array) -> jax.Array:
        a = self.arch
        batch = pixels.shape[0]
        patches = nn.Conv(a.vision_width, (a.patch_size, a.patch_size),
                          strides=(a.patch_size, a.patch_size), padding="VALID", use_bias=False,
                          kernel_init=_normal(0.02), name="patch_embedding")(pixels)
        patches = patches.reshape(batch, -1, a.vision_width)
        cls = self.param("class_embedding", _normal(a.vision_width ** -0.5), (a.vision_width,))
        x = jnp.concatenate([jnp.broadcast_to(cls, (batch, 1, a.vision_width)), patches], axis=1)
        positions = nn.Embed(a.num_patches + 1, a.vision_width, embedding_init=_normal(0.02),
                             name="position_embedding")(jnp.arange(a.num_patches + 1))
        return x + positions[None]


class VisionTransformer(nn.Module):
    arch: ClipArchitecture

    @nn.compact
    def __call__(self, pixels: jax.Array, patch_keep_mask: Optional[jax.Array] = None
                 ) -> jax.Array:
        """Pooled (class token) state [batch, vision_width] of normalised NHWC pixels.

        `patch_keep_mask` bool [batch, num_patches]: patches marked False are removed from
        attention (no token attends to them), which equals dropping them from the sequence.
        """
        a = self.arch
        x = VisionEmbeddings(a, name="embeddings")(pixels)
        x = _layer_norm(a.vision_layer_norm_eps, "pre_layrnorm")(x)
        mask = None
        if patch_keep_mask is not None:
            keep = jnp.concatenate([jnp.ones_like(patch_keep_mask[:, :1], bool),
                                    patch_keep_mask.astype(bool)], axis=1)
            mask = keep[:, None, None, :]
        x = Encoder(a.vision_tower, name="encoder")(x, mask)
        return _layer_norm(a.vision_layer_norm_eps, "post_layernorm")(x[:, 0])


class ClipModel(nn.Module):
    """Both towers, their projections and CLIP's learnable temperature (`logit_scale`, a log)."""

    arch: ClipArchitecture

    def setup(self):
        a = self.arch
        self.text_model = TextTransformer(a)
        self.vision_model = VisionTransformer(a)
        self.text_projection = nn.Dense(a.projection_dim, use_bias=False,
                                        kernel_init=_normal(a.text_width ** -0.5))
        self.visual_projection = nn.Dense(a.projection_dim, use_bias=False,
                                          kernel_init=_normal(a.vision_width ** -0.5))
        self.logit_scale = self.param("logit_scale", nn.initializers.constant(a.logit_scale_init),
                                      ())

    def text_features(self, token_ids, attention_mask=None):
        """Projected, unnormalised text embeddings (HF `get_text_features`)."""
        return self.text_projection(self.text_model(token_ids, attention_mask))

    def image_features(self, pixels, patch_keep_mask=None):
        """Projected, unnormalised image embeddings (HF `get_image_features`), NHWC pixels."""
        return self.visual_projection(self.vision_model(pixels, patch_keep_mask))

    def __call__(self, token_ids, pixels):
        return self.text_features(token_ids), self.image_features(pixels), self.logit_scale


def init_params(arch: ClipArchitecture, rng: jax.Array) -> Params:
    token_ids = jnp.full((1, arch.text_max_length), arch.eos_token_id, jnp.int32)
    pixels = jnp.zeros((1, arch.image_size, arch.image_size, arch.num_channels), jnp.float32)
    return ClipModel(arch).init(rng, token_ids, pixels)["params"]


# --------------------------------------------------------------------------------------------------
# Embedding helpers
# --------------------------------------------------------------------------------------------------

def normalise(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def preprocess_images(images: jax.Array, image_size: int) -> jax.Array:
    """uint8 (or [0, 255] float) NHWC RGB -> float32 normalised with CLIP's mean/std, resized
    (bicubic) when the side differs from the model's."""
    x = images.astype(jnp.float32) / 255.0
    if x.shape[1] != image_size or x.shape[2] != image_size:
        x = jax.image.resize(x, (x.shape[0], image_size, image_size, x.shape[3]), "bicubic")
    return (x - jnp.asarray(CLIP_IMAGE_MEAN)) / jnp.asarray(CLIP_IMAGE_STD)


def combine_modalities(text_embeddings: jax.Array, image_embeddings: jax.Array,
                       has_text: jax.Array, has_image: jax.Array) -> jax.Array:
    """Document embeddings: mean of the L2-normalised embeddings of the modalities present, then
    L2-normalised again. `has_text` / `has_image` bool [batch]; a row with neither is all zeros."""
    text = normalise(text_embeddings) * has_text[:, None]
    image = normalise(image_embeddings) * has_image[:, None]
    count = jnp.maximum(has_text.astype(jnp.float32) + has_image.astype(jnp.float32), 1.0)
    return normalise((text + image) / count[:, None])


class BiEncoder:
    """A CLIP architecture with its parameters and jitted embedding functions (L2-normalised)."""

    def __init__(self, arch: ClipArchitecture, params: Params, model_id: str):
        self.arch, self.params, self.model_id = arch, params, model_id
        self.model = ClipModel(arch)
        self._fingerprint: Optional[str] = None

        def text(params, token_ids):
            return normalise(self.model.apply({"params": params}, token_ids,
                                              method=ClipModel.text_features))

        def image(params, images, patch_keep_mask):
            pixels = preprocess_images(images, arch.image_size)
            return normalise(self.model.apply({"params": params}, pixels, patch_keep_mask,
                                              method=ClipModel.image_features))

        def documents(params, token_ids, images, has_text, has_image, patch_keep_mask):
            return combine_modalities(text(params, token_ids),
                                      image(params, images, patch_keep_mask), has_text, has_image)

        self._text, self._image, self._documents = jax.jit(text), jax.jit(image), jax.jit(documents)

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = fingerprint(self.arch, self.params)
        return self._fingerprint

    def embed_texts(self, token_ids: np.ndarray) -> np.ndarray:
        return np.asarray(self._text(self.params, jnp.asarray(token_ids, jnp.int32)))

    def embed_images(self, images: np.ndarray, patch_keep_mask: Optional[np.ndarray] = None
                     ) -> np.ndarray:
        return np.asarray(self._image(self.params, jnp.asarray(images), patch_keep_mask))

    def embed_documents(self, token_ids: np.ndarray, images: np.ndarray, has_text: np.ndarray,
                        has_image: np.ndarray, patch_keep_mask: Optional[np.ndarray] = None
                        ) -> np.ndarray:
        """float32 [batch, projection_dim] unit vectors (see `combine_modalities`)."""
        return np.asarray(self._documents(
            self.params, jnp.asarray(token_ids, jnp.int32), jnp.asarray(images),
            jnp.asarray(has_text, bool), jnp.asarray(has_image, bool), patch_keep_mask))


def fingerprint(arch: ClipArchitecture, params: Params) -> str:
    """sha256 of the architecture and every parameter (path, dtype, shape, bytes)."""
    digest = hashlib.sha256(arch.to_json().encode())
    for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(params)[0],
                             key=lambda item: jax.tree_util.keystr(item[0])):
        value = np.asarray(leaf)
        digest.update(f"{jax.tree_util.keystr(path)}:{value.dtype}:{value.shape}".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------
# Our trained encoder on disk (written by train_encoder.py)
# --------------------------------------------------------------------------------------------------

def encoder_dir(retrieval: RetrievalConfig, workdir: str) -> epath.Path:
    return paths.Workdir(workdir).retrieval_encoder(retrieval.encoder_dir)


def load_trained(directory: str | epath.Path) -> BiEncoder:
    """The latest checkpoint of an encoder trained by `train_encoder.py` in `directory`."""
    import orbax.checkpoint as ocp

    directory = epath.Path(directory)
    arch_path = directory / ARCHITECTURE_FILE
    if not arch_path.exists():
        raise FileNotFoundError(
            f"no trained retrieval encoder in {directory} ({ARCHITECTURE_FILE} missing): run "
            "`python -m cm3leon_jax.retrieval.train_encoder --config … --workdir …` first")
    arch = ClipArchitecture.from_json(arch_path.read_text())
    with ocp.CheckpointManager(directory / CHECKPOINT_SUBDIR) as manager:
        step = manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {directory / CHECKPOINT_SUBDIR}")
        target = {"params": jax.tree.map(np.asarray, init_params(arch, jax.random.key(0)))}
        restored = manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(target["params"])))
    params = jax.tree.map(jnp.asarray, restored["params"])
    return BiEncoder(arch, params, model_id=f"cm3leon_jax byte-CLIP {directory} step {step}")


# --------------------------------------------------------------------------------------------------
# Hugging Face CLIPModel import
# --------------------------------------------------------------------------------------------------

def architecture_from_hf_config(config: Mapping[str, Any]) -> ClipArchitecture:
    """A `ClipArchitecture` from a HF `CLIPModel` config.json (missing fields take HF defaults)."""
    if config.get("model_type", "clip") != "clip":
        raise ValueError(f"not a CLIPModel config (model_type={config.get('model_type')!r})")
    text = config.get("text_config") or {}
    vision = config.get("vision_config") or {}
    defaults = ClipArchitecture()
    eos = text.get("eos_token_id", defaults.eos_token_id)
    if isinstance(eos, (list, tuple)):
        eos = eos[0]
    image_size = vision.get("image_size", defaults.image_size)
    patch_size = vision.get("patch_size", defaults.patch_size)
    if isinstance(image_size, (list, tuple)) or isinstance(patch_size, (list, tuple)):
        raise ValueError("only square images and patches are supported "
                         f"(image_size={image_size}, patch_size={patch_size})")
    return ClipArchitecture(
        text_vocab_size=text.get("vocab_size", defaults.text_vocab_size),
        text_max_length=text.get("max_position_embeddings", defaults.text_max_length),
        text_width=text.get("hidden_size", defaults.text_width),
        text_layers=text.get("num_hidden_layers", defaults.text_layers),
        text_heads=text.get("num_attention_heads", defaults.text_heads),
        text_mlp_dim=text.get("intermediate_size", defaults.text_mlp_dim),
        text_activation=text.get("hidden_act", defaults.text_activation),
        text_layer_norm_eps=text.get("layer_norm_eps", defaults.text_layer_norm_eps),
        eos_token_id=int(eos),
        image_size=int(image_size), patch_size=int(patch_size),
        num_channels=vision.get("num_channels", defaults.num_channels),
        vision_width=vision.get("hidden_size", defaults.vision_width),
        vision_layers=vision.get("num_hidden_layers", defaults.vision_layers),
        vision_heads=vision.get("num_attention_heads", defaults.vision_heads),
        vision_mlp_dim=vision.get("intermediate_size", defaults.vision_mlp_dim),
        vision_activation=vision.get("hidden_act", defaults.vision_activation),
        vision_layer_norm_eps=vision.get("layer_norm_eps", defaults.vision_layer_norm_eps),
        projection_dim=config.get("projection_dim", defaults.projection_dim),
        logit_scale_init=config.get("logit_scale_init_value", defaults.logit_scale_init))


def hf_name(path: tuple[str, ...], leaf: np.ndarray
            ) -> tuple[str, Callable[[np.ndarray], np.ndarray]]:
    """The HF state-dict key of one of our parameters, and how to turn HF's tensor into ours."""
    *modules, name = path
    modules = [m.replace("layers_", "layers.") if m.startswith("layers_") else m for m in modules]
    if name == "kernel" and leaf.ndim == 2:  # torch Linear [out, in] -> Dense [in, out]
        return ".".join([*modules, "weight"]), lambda w: w.T
    if name == "kernel" and leaf.ndim == 4:  # torch Conv2d [out, in, h, w] -> Conv [h, w, in, out]
        return ".".join([*modules, "weight"]), lambda w: w.transpose(2, 3, 1, 0)
    if name in ("embedding", "scale"):  # nn.Embedding / nn.LayerNorm weight
        return ".".join([*modules, "weight"]), lambda w: w
    return ".".join([*modules, name]), lambda w: w  # bias, class_embedding, logit_scale


def read_hf_state_dict(directory: epath.Path) -> dict[str, np.ndarray]:
    """Tensors of a local HF checkpoint: model.safetensors (sharded or not) or pytorch_model.bin."""
    safetensors_files = sorted(directory.glob("*.safetensors"))
    if safetensors_files:
        from safetensors.numpy import load_file
        state: dict[str, np.ndarray] = {}
        for path in safetensors_files:
            state.update(load_file(str(path)))
        return state
    torch_files = sorted(directory.glob("pytorch_model*.bin"))
    if torch_files:
        import torch
        state = {}
        for path in torch_files:
            loaded = torch.load(str(path), map_location="cpu", weights_only=True)
            state.update({k: v.float().numpy() for k, v in loaded.items()})
        return state
    raise FileNotFoundError(f"no *.safetensors or pytorch_model*.bin weights in {directory}")


def load_hf_clip(directory: str | epath.Path) -> BiEncoder:
    """Imports a Hugging Face `CLIPModel` checkpoint saved in a local directory (no download).

    Reads config.json for the sizes and the weights (safetensors preferred, else torch), maps every
    tensor onto our parameter tree and checks that nothing is missing, left over or misshapen. Texts
    must then be tokenized with the checkpoint's own tokenizer (e.g. `transformers.CLIPTokenizer`
    from the same directory), not our byte tokenizer.
    """
    directory = epath.Path(directory)
    config_path = directory / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} missing: not a Hugging Face checkpoint directory")
    arch = architecture_from_hf_config(json.loads(config_path.read_text()))
    state = read_hf_state_dict(directory)
    # Some exports prefix keys with the model's base name.
    state = {k.removeprefix("clip."): v for k, v in state.items()}
    template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                            jax.eval_shape(lambda: init_params(arch, jax.random.key(0))))
    used: set[str] = set()
    missing: list[str] = []

    def convert(path, leaf):
        keys = tuple(p.key for p in path)
        name, transform = hf_name(keys, leaf)
        if name not in state:
            missing.append(name)
            return np.zeros(leaf.shape, np.float32)
        value = np.asarray(transform(np.asarray(state[name], np.float32)))
        if value.shape != tuple(leaf.shape):
            raise ValueError(f"{directory}: {name} has shape {value.shape} after conversion, "
                             f"expected {tuple(leaf.shape)} for {'/'.join(keys)}")
        used.add(name)
        return value

    params = jax.tree_util.tree_map_with_path(convert, template)
    if missing:
        raise ValueError(f"{directory}: checkpoint lacks {len(missing)} CLIPModel tensor(s), e.g. "
                         f"{', '.join(missing[:5])} (is it a full CLIPModel?)")
    leftover = sorted(k for k in set(state) - used if not k.endswith("position_ids"))
    if leftover:
        raise ValueError(f"{directory}: {len(leftover)} tensor(s) not part of CLIPModel, e.g. "
                         f"{', '.join(leftover[:5])}")
    params = jax.tree.map(jnp.asarray, params)
    return BiEncoder(arch, params, model_id=f"hf:{directory.name}")


def logit_scale_value(params: Params, max_logit_scale: float) -> jax.Array:
    """exp(logit_scale) clipped at `max_logit_scale` (CLIP's temperature)."""
    return jnp.minimum(jnp.exp(params["logit_scale"]), max_logit_scale)


def hf_image_layout(pixels_nchw: np.ndarray) -> np.ndarray:
    """HF `pixel_values` (NCHW) -> our NHWC layout."""
    return np.transpose(pixels_nchw, (0, 2, 3, 1))


__all__ = ["ClipArchitecture", "ClipModel", "BiEncoder", "architecture_for", "init_params",
           "combine_modalities", "normalise", "preprocess_images", "fingerprint", "encoder_dir",
           "load_trained", "load_hf_clip", "architecture_from_hf_config", "logit_scale_value",
           "hf_image_layout"]
