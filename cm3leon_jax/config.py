"""Typed, validated views of the ml_collections configs in `experiments/`.

Configs stay plain `ml_collections.ConfigDict`s (so `--config.a.b=value` overrides, sweeps and
`experiments/*.py` files work as in big_vision), but nothing is built from a raw dict: each stage
asks for a typed section, e.g. `config.section(cfg, "data", DataConfig)`, which

* rejects unknown fields (a typo such as `d_modle` fails instead of being silently ignored),
* checks each field's type against the dataclass annotation,
* runs the section's own cross-field checks (`check()`),

and raises `ConfigError` naming the dotted field, the bad value and what is allowed. This happens
before any model, data set or mesh is built, so a bad config costs milliseconds, not a compile.

A section is a frozen dataclass deriving from `Section`. Sections for later stages (model, mesh,
tokenizers, retrieval, training) live below, one dataclass each, so this file is the one place that
documents every config field.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal, Optional, Sequence, TypeVar

import ml_collections


class ConfigError(ValueError):
    """A config value that cannot work; the message names the field and what is allowed."""


class InputError(ValueError):
    """Input that cannot be used (a checkpoint of another model or vocabulary, data that does not
    fit); the message names it and what to do. Entry points print it without a traceback."""


def fail(field: str, value: Any, problem: str) -> typing.NoReturn:
    raise ConfigError(f"config.{field}={value!r}: {problem}")


def require_choice(field: str, value: Any, allowed: Sequence[Any]) -> None:
    if value not in allowed:
        fail(field, value, f"must be one of {', '.join(map(repr, allowed))}")


def require_positive(field: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        fail(field, value, "must be " + ("non-negative (>= 0)" if allow_zero else "positive (> 0)"))


def require_range(field: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        fail(field, value, f"must be in [{low}, {high}]")


def require_divisible(field: str, value: int, by_field: str, by: int) -> None:
    if by <= 0 or value % by:
        fail(field, value, f"must be divisible by config.{by_field}={by}")


@dataclasses.dataclass(frozen=True)
class Section:
    """Base of every typed config section. Subclasses override `check` for cross-field rules."""

    def check(self, prefix: str) -> None:  # pragma: no cover - default has nothing to check
        del prefix


S = TypeVar("S", bound=Section)

_SCALARS = (int, float, str, bool)


def _type_ok(value: Any, annotation: Any) -> bool:
    """Checks `value` against a (string-evaluated) dataclass annotation; ints are valid floats,
    a Literal's value must be one of its values."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return True
    if origin is Literal:
        return value in typing.get_args(annotation)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin in (tuple, list):
        args = typing.get_args(annotation)
        if not isinstance(value, (tuple, list)):
            return False
        inner = args[0] if args else Any
        return all(_type_ok(v, inner) for v in value)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation in _SCALARS:
        return isinstance(value, annotation)
    # A field type this check does not know would accept anything: refuse it where it is written.
    raise TypeError(f"config fields of type {annotation!r} are not checked; use a scalar, "
                    "Optional, Literal or a tuple of those")


def _describe(annotation: Any) -> str:
    if typing.get_origin(annotation) is Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(annotation)))
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


def section(cfg: ml_collections.ConfigDict, name: str, cls: type[S]) -> S:
    """Returns `cfg.<name>` as a validated `cls`. Missing fields take the dataclass defaults."""
    if name not in cfg:
        raise ConfigError(f"config.{name} is missing: this stage needs a `{name}` section")
    return from_dict(cfg[name], cls, prefix=name)


def from_dict(raw: Any, cls: type[S], prefix: str) -> S:
    if isinstance(raw, ml_collections.ConfigDict):
        raw = raw.to_dict()
    if not isinstance(raw, dict):
        raise ConfigError(f"config.{prefix} must be a section (ConfigDict), got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(
            f"config.{prefix} has unknown field(s) {', '.join(unknown)}; "
            f"known fields: {', '.join(sorted(fields))}")
    values = {}
    for key, value in raw.items():
        annotation = hints[key]
        if isinstance(value, list):
            value = tuple(value)
        if not _type_ok(value, annotation):
            kind = "" if typing.get_origin(annotation) is Literal else "of type "
            fail(f"{prefix}.{key}", value, f"must be {kind}{_describe(annotation)}")
        if annotation is float and isinstance(value, int):
            value = float(value)
        values[key] = value
    missing = [n for n, f in fields.items()
               if n not in values and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"config.{prefix} is missing required field(s) {', '.join(missing)}")
    result = cls(**values)
    result.check(prefix)
    return result


# --------------------------------------------------------------------------------------------------
# data: which documents to read, with their provenance
# --------------------------------------------------------------------------------------------------

Split = Literal["train", "validation", "test"]
DataSource = Literal["shapes", "folder", "tfds", "webdataset"]


@dataclasses.dataclass(frozen=True)
class DataConfig(Section):
    """Where documents come from.

    source: `shapes` (the embedded generated set) or `folder` (a user folder of images plus
      `captions.jsonl`, see `cm3leon_jax/data/sources/folder.py`).
    image_size: side of the square RGB images every later stage sees (shapes renders at it; user
      images are centre-cropped and resized to it). 16..256 and a multiple of 8.
    num_train / num_validation / num_test: `shapes` split sizes (ignored for `folder`).
    seed: `shapes` generation seed; the same seed gives the same bytes.
    max_objects: `shapes` scenes hold 1..max_objects objects (at most 3: one per free grid cell
      keeps every object readable at 32x32).
    textured_fraction: share of `shapes` scenes drawn on a textured instead of plain background.
    folder: the user folder (for `source=folder`).
    validation_fraction / test_fraction: held-out shares of a user folder (by a hash of the file
      name, so adding images never moves old ones between splits).
    data_dir: where tfds writes the built data set; empty means `<workdir>/tfds`.
    default_license / default_source / default_attribution: provenance for user documents whose
      `captions.jsonl` line (and the folder's `dataset.json`) says nothing.
    allowed_licenses: licence policy: SPDX ids (or free strings) a document may carry to be used
      for training or retrieval; empty allows every licence.
    require_license: refuse documents whose licence is `unknown` (even when allowed_licenses is
      empty).
    tfds_name / tfds_splits / image_key / caption_key (source `tfds`): any image-text tfds data set
      already built in `data_dir` (e.g. `coco_captions`), its split names for our train /
      validation / test, and where image and caption sit in an example (`/` for nesting, e.g.
      `captions/text`; a list of captions gives its first).
    webdataset (source `webdataset`): glob of tar shards in the img2dataset layout (`key.jpg|png|
      webp` + `key.txt` or `key.json` with `caption`, optional `license`, `url`/`source`); local or
      gs://. Splits by a hash of the key, as for folders.
    """

    source: DataSource = "shapes"
    image_size: int = 32
    num_train: int = 2000
    num_validation: int = 200
    num_test: int = 200
    seed: int = 0
    max_objects: int = 3
    textured_fraction: float = 0.5
    folder: str = ""
    validation_fraction: float = 0.05
    test_fraction: float = 0.05
    data_dir: str = ""
    default_license: str = ""
    default_source: str = ""
    default_attribution: str = ""
    allowed_licenses: tuple[str, ...] = ()
    require_license: bool = False
    tfds_name: str = ""
    tfds_splits: tuple[str, ...] = ("train", "validation", "test")
    image_key: str = "image"
    caption_key: str = "caption"
    webdataset: str = ""

    def check(self, prefix: str) -> None:
        require_range(f"{prefix}.image_size", self.image_size, 16, 256)
        require_divisible(f"{prefix}.image_size", self.image_size, "(the VQ-GAN's minimum factor)", 8)
        for split in ("num_train", "num_validation", "num_test"):
            require_positive(f"{prefix}.{split}", getattr(self, split))
        require_range(f"{prefix}.max_objects", self.max_objects, 1, 3)
        require_range(f"{prefix}.textured_fraction", self.textured_fraction, 0.0, 1.0)
        require_range(f"{prefix}.validation_fraction", self.validation_fraction, 0.0, 0.5)
        require_range(f"{prefix}.test_fraction", self.test_fraction, 0.0, 0.5)
        if self.source == "folder" and not self.folder:
            fail(f"{prefix}.folder", self.folder, "must name the user folder when source='folder'")
        if self.source == "tfds" and not self.tfds_name:
            fail(f"{prefix}.tfds_name", self.tfds_name, "must name a tfds data set when "
                 "source='tfds' (e.g. 'coco_captions')")
        if len(self.tfds_splits) != 3:
            fail(f"{prefix}.tfds_splits", self.tfds_splits,
                 "must give 3 split names: for train, validation and test")
        if self.source == "webdataset" and not self.webdataset:
            fail(f"{prefix}.webdataset", self.webdataset,
                 "must be a glob of tar shards when source='webdataset'")


def data_config(cfg: ml_collections.ConfigDict) -> DataConfig:
    return section(cfg, "data", DataConfig)


PrepareRetrieval = Literal["auto", "required", "off"]


@dataclasses.dataclass(frozen=True)
class PrepareConfig(Section):
    """Offline data preparation (`python -m cm3leon_jax.data.prepare`, an Apache Beam pipeline).

    num_shards: token shards per split (a document's shard is a hash of its id, so removing a
      document rewrites only its shard and those of documents that retrieved it).
    encode_batch_size: images per jit-compiled VQ-GAN call inside a Beam worker.
    splits: which splits to prepare.
    vocab_dir: the unified vocabulary written by the tokenizer stage; empty =
      `<workdir>/tokenizers/vocab`.
    retrieval: `auto` attaches neighbours where the retrieval stage wrote a neighbour table for the
      split, `required` fails without one, `off` prepares documents without retrieved ones.
    beam_options: Apache Beam pipeline options, e.g. ("--direct_num_workers=2",
      "--direct_running_mode=multi_processing") or ("--runner=DataflowRunner", "--project=...").
    """

    num_shards: int = 4
    encode_batch_size: int = 64
    splits: tuple[Split, ...] = ("train", "validation", "test")
    vocab_dir: str = ""
    retrieval: PrepareRetrieval = "auto"
    beam_options: tuple[str, ...] = ()

    def check(self, prefix: str) -> None:
        require_positive(f"{prefix}.num_shards", self.num_shards)
        require_positive(f"{prefix}.encode_batch_size", self.encode_batch_size)
        if not self.splits:
            fail(f"{prefix}.splits", self.splits, "must name at least one split")


def prepare_config(cfg: ml_collections.ConfigDict) -> PrepareConfig:
    return section(cfg, "prepare", PrepareConfig) if "prepare" in cfg else PrepareConfig()


# --------------------------------------------------------------------------------------------------
# model + mesh: the decoder and how it is laid out on devices
# --------------------------------------------------------------------------------------------------

ModelPreset = Literal["cm3leon", "chameleon"]
ComputeDtype = Literal["float32", "bfloat16", "float16"]
ParamDtype = Literal["float32", "bfloat16"]
RematPolicy = Literal["none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable"]
REMAT_POLICIES = typing.get_args(RematPolicy)
AttentionImplementation = Literal["auto", "xla", "cudnn", "splash"]
ATTENTION_IMPLEMENTATIONS = typing.get_args(AttentionImplementation)
# What the Pallas splash kernel (`models/attention.py`) tiles: sequences in blocks of a multiple of
# 128 tokens (the TPU's vector lane width), heads of a multiple of 64 wide (narrower heads are
# padded to a lane inside the kernel; 64 and multiples of 128 are the widths it is used with).
# `model.backward`: the parts whose hand-written backward pass can be chosen (models/backward.py).
BACKWARD_PARTS = ("matmul", "attention", "loss")


def backward_problem(choice: str) -> Optional[str]:
    """Why `choice` is not a valid `model.backward`, or None."""
    if choice in ("auto", "custom", "autodiff"):
        return None
    unknown = [part for part in choice.split("+") if part not in BACKWARD_PARTS]
    if unknown:
        return (f"must be 'auto', 'custom', 'autodiff' or parts joined by '+' from "
                f"{', '.join(BACKWARD_PARTS)}; unknown: {', '.join(unknown)}")
    return None


SPLASH_SEQ_MULTIPLE = 128
SPLASH_HEAD_DIM_MULTIPLE = 64


@dataclasses.dataclass(frozen=True)
class ModelConfig(Section):
    """The decoder-only transformer (`cm3leon_jax/models/decoder.py`).

    preset: the block family. `cm3leon` (OPT/metaseq-like): pre-LayerNorm without scale or shift,
      GELU MLP, learned absolute positions. `chameleon` (Llama-like): RMSNorm, SwiGLU MLP, RoPE.
      Both have no biases; `qk_norm`, `swin_norm`, `num_kv_heads` and `tie_embeddings` are separate
      switches (experiments/chameleon_7b.py turns on what Chameleon uses).
    vocab_size / num_layers / d_model / num_heads: the usual sizes; d_model % num_heads == 0.
    num_kv_heads: key/value heads for grouped-query attention; 0 means num_heads (plain multi-head).
    head_dim: width of one attention head; 0 means d_model // num_heads (then d_model must be
      divisible by num_heads). Set explicitly only for Gemma-style wide heads.
    mlp_dim: hidden width of the MLP; 0 means the preset's default (cm3leon: 4 * d_model;
      chameleon: 8/3 * d_model rounded up to a multiple of 256, the Llama rule, 11008 at 4096).
    max_seq_len: longest sequence (and the size of cm3leon's position table).
    tie_embeddings: the output projection reuses the token embedding table.
    dtype: compute dtype of activations and matmuls; param_dtype: storage dtype of the weights
      (keep float32 for training; softmax, norms and the loss always run in float32).
    remat: what the backward pass recomputes instead of storing, per block: `none` (store all),
      `full` (store only each block's input), `dots_saveable` (store every matmul output: weight
      matmuls and attention; recompute the elementwise work), `dots_with_no_batch_dims_saveable`
      (store the weight matmul outputs only). `python -m cm3leon_jax.plan` prints the bytes each
      keeps.
    scan_layers: run the blocks with one `nn.scan` (stacked weights with a leading `layers` axis:
      compile time independent of depth) instead of a Python loop of separately named blocks.
    z_loss: weight of the auxiliary z-loss, z_loss * log(Z)^2 per token (Chameleon uses 1e-5).
    attention: implementation of the attention function (`models/attention.py`): `xla` (einsum +
      masked float32 softmax, runs anywhere), `cudnn` (cuDNN's fused flash kernel, NVIDIA GPUs,
      float16/bfloat16), `splash` (the Pallas splash kernel: TPU, or CPU in interpret mode for
      tests; head_dim a multiple of 64, training sequences a multiple of 128) or `auto` (splash on
      TPU, cudnn on GPU in 16-bit compute, xla otherwise and wherever the kernel's shape rules do
      not hold). Decode steps with a KV cache always run the xla path.
    swin_norm: Chameleon's norm reordering: normalise each sub-block's output before the residual
      add instead of its input.
    qk_norm: LayerNorm over each head's queries and keys (per-head weight and bias) before RoPE.
    rope_theta: RoPE base frequency (chameleon preset).
    norm_eps: epsilon of every LayerNorm / RMSNorm.
    init_std: std of the truncated normal (cut at 3 std) of every weight matrix and embedding.
    position_init_std: std of cm3leon's learned position embeddings.
    zero_init_output_projections: initialise each block's attention output and MLP down projection
      to zero, so every block starts as the identity (the CM3leon recipe).
    backward: how gradients are computed (`models/backward.py`): `custom` uses the hand-written
      backward passes of the weight matmuls, the attention core and the loss, `autodiff` JAX's
      own, parts joined by `+` (`matmul+attention`) those parts only, and `auto` each part where
      it was measured better: attention and loss everywhere (less memory; faster on CPU), the
      matmul on CPU in 16-bit compute (docs/BENCHMARKS.md, "Backward passes"). Same gradients
      either way (tested against torch).
    """

    preset: ModelPreset = "cm3leon"
    vocab_size: int = 65536
    num_layers: int = 24
    d_model: int = 1024
    num_heads: int = 16
    num_kv_heads: int = 0
    head_dim: int = 0
    mlp_dim: int = 0
    max_seq_len: int = 4096
    tie_embeddings: bool = True
    dtype: ComputeDtype = "float32"
    param_dtype: ParamDtype = "float32"
    remat: RematPolicy = "none"
    scan_layers: bool = True
    z_loss: float = 0.0
    attention: AttentionImplementation = "xla"
    swin_norm: bool = False
    qk_norm: bool = False
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    init_std: float = 0.006
    position_init_std: float = 0.0002
    zero_init_output_projections: bool = True
    backward: str = "auto"

    @property
    def kv_heads(self) -> int:
        """Number of key/value heads (num_kv_heads with 0 resolved to num_heads)."""
        return self.num_kv_heads or self.num_heads

    @property
    def resolved_head_dim(self) -> int:
        """Width of one head (head_dim with 0 resolved to d_model // num_heads)."""
        return self.head_dim or self.d_model // self.num_heads

    @property
    def hidden_dim(self) -> int:
        """MLP hidden width (mlp_dim with 0 resolved to the preset's default)."""
        if self.mlp_dim:
            return self.mlp_dim
        if self.preset == "chameleon":
            return -(-(8 * self.d_model // 3) // 256) * 256
        return 4 * self.d_model

    def check(self, prefix: str) -> None:
        for name in ("vocab_size", "num_layers", "d_model", "num_heads", "max_seq_len"):
            require_positive(f"{prefix}.{name}", getattr(self, name))
        require_positive(f"{prefix}.num_kv_heads", self.num_kv_heads, allow_zero=True)
        require_positive(f"{prefix}.mlp_dim", self.mlp_dim, allow_zero=True)
        require_positive(f"{prefix}.head_dim", self.head_dim, allow_zero=True)
        if not self.head_dim:
            require_divisible(f"{prefix}.d_model", self.d_model, f"{prefix}.num_heads",
                              self.num_heads)
        require_divisible(f"{prefix}.num_heads", self.num_heads, f"{prefix}.num_kv_heads",
                          self.kv_heads)
        if self.preset == "chameleon" and self.resolved_head_dim % 2:
            fail(f"{prefix}.head_dim", self.head_dim,
                 f"RoPE needs an even head width, and it resolves to {self.resolved_head_dim}")
        if backward_problem(self.backward):
            fail(f"{prefix}.backward", self.backward, backward_problem(self.backward))
        if self.attention == "splash" and self.resolved_head_dim % SPLASH_HEAD_DIM_MULTIPLE:
            fail(f"{prefix}.attention", self.attention,
                 f"the splash kernel tiles heads of a multiple of {SPLASH_HEAD_DIM_MULTIPLE} "
                 f"wide, and head_dim resolves to {self.resolved_head_dim}; change "
                 f"{prefix}.head_dim (or d_model / num_heads), or use 'xla' or 'auto'")
        require_positive(f"{prefix}.z_loss", self.z_loss, allow_zero=True)
        require_positive(f"{prefix}.rope_theta", self.rope_theta)
        require_positive(f"{prefix}.norm_eps", self.norm_eps)
        require_positive(f"{prefix}.init_std", self.init_std)
        require_positive(f"{prefix}.position_init_std", self.position_init_std)


def model_config(cfg: ml_collections.ConfigDict) -> ModelConfig:
    return section(cfg, "model", ModelConfig)


MESH_AXES = ("data", "fsdp", "tensor")
# Every logical axis name the decoder puts on a parameter or activation.
LOGICAL_AXES = ("batch", "length", "embed", "mlp", "heads", "kv_heads", "head_dim", "vocab",
                "layers")
# MaxText-style: rules are tried in order and a mesh axis is used at most once per array, so the
# activation (batch, length, embed) takes (data, fsdp) for `batch` and leaves `embed` unsharded,
# while a weight (embed, mlp) is split over fsdp (rows) and tensor (columns).
DEFAULT_LOGICAL_AXIS_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("layers", None),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig(Section):
    """The device mesh (`cm3leon_jax/parallel/mesh.py`) and the one logical-axis rule table.

    data / fsdp / tensor: sizes of the three mesh axes; their product must equal the device count.
      One of them may be -1: "all devices the others leave". `data` replicates the weights, `fsdp`
      shards weights and optimizer state along `embed` (and the batch, like data), `tensor` splits
      heads / MLP width / vocabulary (Megatron-style).
    rules: (logical axis name, mesh axis | tuple of mesh axes | None) pairs, in priority order.
      Logical names: batch, length, embed, mlp, heads, kv_heads, head_dim, vocab, layers.
    """

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    rules: tuple[tuple[Any, ...], ...] = DEFAULT_LOGICAL_AXIS_RULES

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.data, self.fsdp, self.tensor)

    def logical_axis_rules(self) -> tuple[tuple[str, Any], ...]:
        """The rule table as flax expects it: tuples all the way down (configs may hold lists)."""
        return tuple((name, tuple(axes) if isinstance(axes, (list, tuple)) else axes)
                     for name, axes in self.rules)

    def check(self, prefix: str) -> None:
        for axis in MESH_AXES:
            size = getattr(self, axis)
            if size != -1 and size < 1:
                fail(f"{prefix}.{axis}", size, "must be a positive axis size or -1 (the rest)")
        if sum(size == -1 for size in self.shape) > 1:
            fail(f"{prefix}", dict(zip(MESH_AXES, self.shape)),
                 "at most one of data, fsdp, tensor may be -1")
        seen = set()
        for i, rule in enumerate(self.rules):
            field = f"{prefix}.rules[{i}]"
            if not isinstance(rule, (tuple, list)) or len(rule) != 2:
                fail(field, rule, "must be a (logical_axis, mesh_axis) pair")
            name, axes = rule
            require_choice(f"{field}[0]", name, LOGICAL_AXES)
            if name in seen:
                fail(f"{field}[0]", name, "appears twice; each logical axis has one rule")
            seen.add(name)
            for axis in (axes if isinstance(axes, (tuple, list)) else (axes,)):
                if axis is not None:
                    require_choice(f"{field}[1]", axis, MESH_AXES)


def mesh_config(cfg: ml_collections.ConfigDict) -> MeshConfig:
    return section(cfg, "mesh", MeshConfig)


# vqgan / vqgan_train / text_tokenizer / vocab: the image and text tokenizers and the id space
# (cm3leon_jax/tokenizers/, cm3leon_jax/vocab.py)

EncoderContext = Literal["global", "local"]
CodebookLookup = Literal["cosine", "l2"]
CodebookUpdate = Literal["loss", "ema"]
ReconstructionLoss = Literal["l1", "l2"]
RestartSampling = Literal["uniform", "error"]
TextModelType = Literal["bpe", "unigram"]
# 256 byte pieces + <unk> + room for the corpus's characters and a few merges.
MIN_TEXT_VOCAB_SIZE = 300


def _is_power_of_two(value: int) -> bool:
    return value >= 1 and value & (value - 1) == 0


@dataclasses.dataclass(frozen=True)
class VQGANConfig(Section):
    """The VQ-GAN image tokenizer: architecture, codebook and losses (`cm3leon_jax/tokenizers/`).

    image_size: side of the square RGB images it reads (must equal `data.image_size` when trained).
    downsample_factor: image side / code-grid side; a power of two >= 2 (paper: 8, 256 -> 32x32).
    channels: width of the first encoder level (taming: 128).
    channel_multipliers: width of each resolution level as a multiple of `channels`; one entry per
      level, so len == log2(downsample_factor) + 1 (taming f16: (1, 1, 2, 2, 4)).
    num_res_blocks: residual blocks per encoder level (the decoder uses one more, as in taming).
    attention_resolutions: feature-map sides after which a self-attention block is added (taming:
      (16,)); each must be a side the encoder visits, image_size / 2**i.
    mid_attention: a self-attention block between the two middle residual blocks (taming: on).
    encoder_context: `global` (taming's encoder: every code sees the whole image) or `local` (edge
      padding, no middle blocks, 1x1 convs at the code resolution: a code sees its patch and ~10
      pixels around it, so flat background away from objects is one code; `tokenizers/vqgan.py`).
    norm_groups: GroupNorm groups; every level's width must be divisible by it.
    codebook_size: number of codes (paper: 8192; >= 2).
    code_dim: dimension of a code vector (ViT-VQGAN: a small dimension such as 32 uses the codebook
      better than the encoder width).
    codebook_lookup: `cosine` (codes and encoder outputs L2-normalised, nearest by angle) or `l2`.
    codebook_update: `loss` (codebook is a parameter trained by the codebook loss) or `ema`
      (codebook is the moving average of the encoder outputs assigned to it; no codebook loss).
    ema_decay: decay of the `ema` updates, in (0, 1).
    commitment_cost: weight of ||z - sg(code)||^2 (VQ-VAE's beta; taming: 0.25).
    restart_unused_after: a code unused for this many consecutive training steps is re-initialised
      from a random encoder output of the batch; 0 disables restarts.
    restart_sampling: how that encoder output is drawn: `uniform`, or `error` (probability
      proportional to its squared distance to its current code, k-means++'s rule: revived codes go
      where the codebook serves worst).
    reconstruction_loss: `l1` or `l2` on images scaled to [-1, 1].
    edge_weight: weight of edges in the reconstruction loss: each pixel's error counts
      1 + edge_weight * (the target's local contrast in [0, 1]) times, normalised to the mean
      weight (`tokenizers/losses.edge_weights`; 0 = plain mean). Small objects are a few percent
      of the pixels, so a plain mean spends the model on flat background.
    discriminator_start: training step from which the PatchGAN loss is on (taming: ~ 10k steps).
    discriminator_weight: scale of the adaptive GAN weight (taming: 0.8); 0 disables the GAN.
    discriminator_channels / discriminator_layers: PatchGAN width and number of stride-2 layers;
      image_size / 2**discriminator_layers must be >= 4 so each patch logit sees a real patch.
    adaptive_weight_max: clip of the adaptive weight ||grad rec|| / ||grad gan|| (taming: 1e4).
    """

    image_size: int = 32
    downsample_factor: int = 4
    channels: int = 64
    channel_multipliers: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attention_resolutions: tuple[int, ...] = ()
    mid_attention: bool = True
    encoder_context: EncoderContext = "global"
    norm_groups: int = 16
    codebook_size: int = 512
    code_dim: int = 32
    codebook_lookup: CodebookLookup = "cosine"
    codebook_update: CodebookUpdate = "loss"
    ema_decay: float = 0.99
    commitment_cost: float = 0.25
    restart_unused_after: int = 200
    restart_sampling: RestartSampling = "uniform"
    reconstruction_loss: ReconstructionLoss = "l1"
    edge_weight: float = 0.0
    discriminator_start: int = 2000
    discriminator_weight: float = 0.5
    discriminator_channels: int = 64
    discriminator_layers: int = 2
    adaptive_weight_max: float = 1e4

    @property
    def code_grid_size(self) -> int:
        """Side of the code grid: image_size / downsample_factor."""
        return self.image_size // self.downsample_factor

    def level_sides(self) -> tuple[int, ...]:
        """Feature-map side of each encoder level."""
        return tuple(self.image_size // 2**i for i in range(len(self.channel_multipliers)))

    def check(self, prefix: str) -> None:
        require_range(f"{prefix}.image_size", self.image_size, 8, 4096)
        if not _is_power_of_two(self.downsample_factor) or self.downsample_factor < 2:
            fail(f"{prefix}.downsample_factor", self.downsample_factor,
                 "must be a power of two >= 2 (2, 4, 8, 16, ...)")
        require_divisible(f"{prefix}.image_size", self.image_size,
                          f"{prefix}.downsample_factor", self.downsample_factor)
        levels = self.downsample_factor.bit_length()  # log2(factor) + 1
        if len(self.channel_multipliers) != levels:
            fail(f"{prefix}.channel_multipliers", self.channel_multipliers,
                 f"needs exactly log2(downsample_factor) + 1 = {levels} entries (one per "
                 f"resolution level) for downsample_factor={self.downsample_factor}")
        require_positive(f"{prefix}.channels", self.channels)
        require_positive(f"{prefix}.norm_groups", self.norm_groups)
        for multiplier in self.channel_multipliers:
            require_positive(f"{prefix}.channel_multipliers", multiplier)
            if (self.channels * multiplier) % self.norm_groups:
                fail(f"{prefix}.norm_groups", self.norm_groups,
                     f"must divide every level's width channels * multiplier = "
                     f"{[self.channels * m for m in self.channel_multipliers]}")
        require_positive(f"{prefix}.num_res_blocks", self.num_res_blocks)
        sides = self.level_sides()
        for side in self.attention_resolutions:
            if side not in sides:
                fail(f"{prefix}.attention_resolutions", self.attention_resolutions,
                     f"every entry must be a feature-map side of the encoder, one of {sides}")
        if self.codebook_size < 2:
            fail(f"{prefix}.codebook_size", self.codebook_size, "must be >= 2")
        require_positive(f"{prefix}.code_dim", self.code_dim)
        if not 0.0 < self.ema_decay < 1.0:
            fail(f"{prefix}.ema_decay", self.ema_decay, "must be in (0, 1), e.g. 0.99")
        require_positive(f"{prefix}.commitment_cost", self.commitment_cost, allow_zero=True)
        require_positive(f"{prefix}.edge_weight", self.edge_weight, allow_zero=True)
        require_positive(f"{prefix}.restart_unused_after", self.restart_unused_after,
                         allow_zero=True)
        require_positive(f"{prefix}.discriminator_start", self.discriminator_start,
                         allow_zero=True)
        require_positive(f"{prefix}.discriminator_weight", self.discriminator_weight,
                         allow_zero=True)
        require_positive(f"{prefix}.discriminator_channels", self.discriminator_channels)
        require_positive(f"{prefix}.discriminator_layers", self.discriminator_layers)
        if self.image_size // 2**self.discriminator_layers < 4:
            fail(f"{prefix}.discriminator_layers", self.discriminator_layers,
                 f"too many for image_size={self.image_size}: image_size / 2**layers must be >= 4")
        require_positive(f"{prefix}.adaptive_weight_max", self.adaptive_weight_max)


@dataclasses.dataclass(frozen=True)
class VQGANTrainConfig(Section):
    """How `python -m cm3leon_jax.tokenizers.train_vqgan` optimises the VQ-GAN.

    num_steps: training steps. batch_size: global batch, sharded over all local devices (must be
      divisible by their number). learning_rate: Adam peak (linear warmup over warmup_steps, then
      cosine decay to learning_rate * final_learning_rate_fraction). adam_b1 / adam_b2: taming's
      (0.5, 0.9) keep the GAN stable. discriminator_learning_rate: the PatchGAN's Adam rate.
    grad_clip_norm: global gradient-norm clip (0 disables).
    log_every / image_every / checkpoint_every: steps between scalar logs, reconstruction grids and
      Orbax checkpoints. keep_checkpoints: how many checkpoints Orbax keeps.
    eval_batch_size: batch of the final test-split evaluation. shuffle_buffer: tf.data shuffle.
    seed: parameter initialisation, shuffling and codebook restarts.
    crop_size: train on random crop_size x crop_size crops of each image (0: whole images). The
      VQ-GAN is convolutional (its one attention block has no positions), so a tokenizer for large
      images trains at the cost of small ones and still encodes whole images; taming does the same.
    init_from: an image tokenizer export (or a train_vqgan workdir holding one) whose weights and
      codebook start a fresh run ('' = random initialisation). Its architecture must equal this
      config's except image_size: a tokenizer for a new resolution fine-tunes from an existing one.
    """

    num_steps: int = 3000
    batch_size: int = 64
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    final_learning_rate_fraction: float = 0.05
    adam_b1: float = 0.5
    adam_b2: float = 0.9
    discriminator_learning_rate: float = 2e-4
    grad_clip_norm: float = 1.0
    log_every: int = 50
    image_every: int = 500
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    eval_batch_size: int = 100
    shuffle_buffer: int = 10000
    seed: int = 0
    crop_size: int = 0
    init_from: str = ""

    def check(self, prefix: str) -> None:
        require_positive(f"{prefix}.crop_size", self.crop_size, allow_zero=True)
        for name in ("num_steps", "batch_size", "learning_rate", "log_every", "image_every",
                     "checkpoint_every", "keep_checkpoints", "eval_batch_size", "shuffle_buffer",
                     "discriminator_learning_rate"):
            require_positive(f"{prefix}.{name}", getattr(self, name))
        require_positive(f"{prefix}.warmup_steps", self.warmup_steps, allow_zero=True)
        if self.warmup_steps >= self.num_steps:
            fail(f"{prefix}.warmup_steps", self.warmup_steps,
                 f"must be smaller than config.{prefix}.num_steps={self.num_steps}")
        require_range(f"{prefix}.final_learning_rate_fraction",
                      self.final_learning_rate_fraction, 0.0, 1.0)
        require_range(f"{prefix}.adam_b1", self.adam_b1, 0.0, 0.999999)
        require_range(f"{prefix}.adam_b2", self.adam_b2, 0.0, 0.999999)
        require_positive(f"{prefix}.grad_clip_norm", self.grad_clip_norm, allow_zero=True)


@dataclasses.dataclass(frozen=True)
class TextTokenizerConfig(Section):
    """The sentencepiece text tokenizer (`cm3leon_jax/tokenizers/text.py`).

    vocab_size: sentencepiece pieces, including its 256 byte-fallback pieces and <unk>
      (paper: 56,320); >= 300.
    model_type: `bpe` (the paper's) or `unigram`.
    corpus: a UTF-8 text file, one sentence per line; empty means every caption, question, answer
      and edit instruction of the `data` train split (`sources.text_corpus`).
    character_coverage: share of the corpus's characters that get their own piece; the rest are
      spelled in bytes (byte fallback is always on, so no text is unrepresentable).
    max_sentences: train on at most this many sentences (sentencepiece samples them); 0 means all.
    split_digits: one piece per digit (numbers generalise instead of memorising 4-digit pieces).
    """

    vocab_size: int = 512
    model_type: TextModelType = "bpe"
    corpus: str = ""
    character_coverage: float = 1.0
    max_sentences: int = 0
    split_digits: bool = True

    def check(self, prefix: str) -> None:
        if self.vocab_size < MIN_TEXT_VOCAB_SIZE:
            fail(f"{prefix}.vocab_size", self.vocab_size,
                 f"must be >= {MIN_TEXT_VOCAB_SIZE}: 256 byte-fallback pieces + <unk> + the "
                 "corpus's characters and merges")
        require_range(f"{prefix}.character_coverage", self.character_coverage, 0.98, 1.0)
        require_positive(f"{prefix}.max_sentences", self.max_sentences, allow_zero=True)


@dataclasses.dataclass(frozen=True)
class VocabConfig(Section):
    """The unified id space (`cm3leon_jax/vocab.py`): special tokens, then text, then image codes.

    num_mask_sentinels: CM3 sentinels <mask:0> .. <mask:K-1> (the paper draws at most 16 spans).
    pad_to_multiple: the decoder's vocab_size is rounded up to a multiple of this (128 keeps the
      embedding and logits matmuls tile-aligned on TPU/GPU); the padding ids are never produced.
    """

    num_mask_sentinels: int = 16
    pad_to_multiple: int = 128

    def check(self, prefix: str) -> None:
        require_range(f"{prefix}.num_mask_sentinels", self.num_mask_sentinels, 1, 1024)
        require_positive(f"{prefix}.pad_to_multiple", self.pad_to_multiple)


# --------------------------------------------------------------------------------------------------
# retrieval: bi-encoder, memory-bank index and retrieval rules
# --------------------------------------------------------------------------------------------------

RetrievalActivation = Literal["quick_gelu", "gelu", "gelu_new", "gelu_pytorch_tanh"]


@dataclasses.dataclass(frozen=True)
class RetrievalConfig(Section):
    """The dense retriever of retrieval-augmented pretraining (see `cm3leon_jax/retrieval/`).

    Rules (what may be retrieved for a query document; `retrieval/rules.py`):
    k: documents retrieved per query (the paper uses 2).
    relevance_threshold: candidates scoring above it with the query (cosine) are near-duplicates
      of it and skipped (paper: 0.9).
    diversity_threshold: a candidate scoring above it with an already chosen one is skipped. The
      paper gives no number; 0.9 calls "too similar" what relevance calls a near-duplicate.
    prefer_multimodal: choose image+text documents before text-only or image-only ones.
    query_dropout: share of the query's tokens dropped before embedding it, training only (paper:
      0.2): bytes of the caption, patches of the image.
    num_candidates: nearest neighbours fetched from the index per query before the rules apply.
      Near-duplicates (> relevance_threshold) can fill the first dozens in a corpus with many
      similar documents; 128 left 97% of `shapes` train documents with k=2 neighbours, 32 only 51%.
    query_dropout_seed: seed of the dropout; a document's dropout depends on it and the document's id
      only (`rules.document_id_keys`), never on batching or workers.
    neighbour_splits: splits whose documents get neighbour tables (`retrieval/neighbours.py`); the
      memory bank is always the train split, and only train queries get query dropout.

    Index (`retrieval/index.py`):
    exact_search_below: corpora smaller than this use exact (brute-force) search, no ScaNN tree.
    index_num_leaves / index_leaves_to_search / index_training_sample_size / index_reorder: ScaNN
      tree and re-scoring sizes; 0 derives them from the corpus size (see `index.scann_parameters`).
    index_ah_training_sample_size: points the asymmetric-hashing codebooks train on; 0 = min(N,
    30k). index_dims_per_block: dimensions per asymmetric-hashing block (score_ah; 2 = 16 codes / 2
    dims). index_anisotropic_threshold: 0 = plain (isotropic) asymmetric hashing; > 0, e.g. 0.2, turns on
      ScaNN's anisotropic quantisation, which nearly doubled the build at 1M documents for no recall
      gain once the best candidates are re-scored exactly (docs/BENCHMARKS.md, Retrieval).
    index_shards: ScaNN trees over contiguous ranges of the bank, each searched alone and the
      answers merged by exact score, so no one searcher (or host) needs the whole bank.
    search_batch_size: queries per batched search call.
    index_dir: where the index is saved; empty means `<workdir>/retrieval_index`.

    Encoder (`retrieval/encoder.py`, the architecture of Hugging Face `CLIPModel`):
    text_max_length: byte-tokenizer length (BOS + UTF-8 bytes + EOS; longer captions truncated).
    text_width / text_layers / text_heads, vision_width / vision_layers / vision_heads: tower sizes.
    patch_size: ViT patch side; must divide `data.image_size`.
    mlp_ratio: MLP width as a multiple of the tower width.
    projection_dim: shared embedding size.
    activation: the activation (HF `hidden_act` names).
    encoder_dir: where the encoder's checkpoints live; empty means `<workdir>/retrieval_encoder`.

    Contrastive training (`retrieval/train_encoder.py`):
    train_steps, batch_size, learning_rate (AdamW peak, linear warm-up then cosine decay over
    train_steps), warmup_steps, weight_decay, max_logit_scale (CLIP clips exp(logit_scale) at 100),
    seed, log_every, checkpoint_every, embed_batch_size (documents per embedding call).
    """

    k: int = 2
    relevance_threshold: float = 0.9
    diversity_threshold: float = 0.9
    prefer_multimodal: bool = True
    query_dropout: float = 0.2
    num_candidates: int = 128
    query_dropout_seed: int = 0
    neighbour_splits: tuple[Split, ...] = ("train", "validation", "test")

    exact_search_below: int = 20000
    index_num_leaves: int = 0
    index_leaves_to_search: int = 0
    index_training_sample_size: int = 0
    index_dims_per_block: int = 2
    index_ah_training_sample_size: int = 0
    index_anisotropic_threshold: float = 0.0
    index_reorder: int = 0
    index_shards: int = 1
    search_batch_size: int = 1024
    index_dir: str = ""

    text_max_length: int = 160
    text_width: int = 128
    text_layers: int = 2
    text_heads: int = 4
    vision_width: int = 128
    vision_layers: int = 2
    vision_heads: int = 4
    patch_size: int = 4
    mlp_ratio: int = 4
    projection_dim: int = 128
    activation: RetrievalActivation = "quick_gelu"
    encoder_dir: str = ""

    train_steps: int = 1000
    batch_size: int = 128
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.1
    max_logit_scale: float = 100.0
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 500
    embed_batch_size: int = 256

    def check(self, prefix: str) -> None:
        if self.k < 1:
            fail(f"{prefix}.k", self.k, "must be >= 1")
        for name in ("relevance_threshold", "diversity_threshold"):
            require_range(f"{prefix}.{name}", getattr(self, name), 0.0, 1.0)
        if not 0.0 <= self.query_dropout < 1.0:
            fail(f"{prefix}.query_dropout", self.query_dropout, "must be in [0, 1)")
        if self.num_candidates <= self.k:
            fail(f"{prefix}.num_candidates", self.num_candidates,
                 f"must exceed config.{prefix}.k={self.k} (the query itself and near-duplicates "
                 "are among the candidates)")
        for name in ("exact_search_below", "index_num_leaves", "index_leaves_to_search",
                     "index_training_sample_size", "index_ah_training_sample_size",
                     "index_reorder"):
            require_positive(f"{prefix}.{name}", getattr(self, name), allow_zero=True)
        if self.index_num_leaves and self.index_leaves_to_search > self.index_num_leaves:
            fail(f"{prefix}.index_leaves_to_search", self.index_leaves_to_search,
                 f"must be <= config.{prefix}.index_num_leaves={self.index_num_leaves}")
        if self.index_reorder and self.index_reorder < self.num_candidates:
            fail(f"{prefix}.index_reorder", self.index_reorder,
                 f"must be 0 (derived) or >= config.{prefix}.num_candidates={self.num_candidates}")
        require_range(f"{prefix}.index_dims_per_block", self.index_dims_per_block, 1, 8)
        require_positive(f"{prefix}.index_shards", self.index_shards)
        if not 0.0 <= self.index_anisotropic_threshold < 1.0:
            fail(f"{prefix}.index_anisotropic_threshold", self.index_anisotropic_threshold,
                 "must be in [0, 1) (0: isotropic asymmetric hashing)")
        if self.text_max_length < 3:
            fail(f"{prefix}.text_max_length", self.text_max_length,
                 "must be >= 3 (BOS, at least one byte, EOS)")
        for tower in ("text", "vision"):
            width, layers, heads = (getattr(self, f"{tower}_{n}") for n in ("width", "layers", "heads"))
            require_positive(f"{prefix}.{tower}_layers", layers)
            require_positive(f"{prefix}.{tower}_heads", heads)
            require_divisible(f"{prefix}.{tower}_width", width, f"{prefix}.{tower}_heads", heads)
        for name in ("patch_size", "mlp_ratio", "projection_dim", "train_steps", "batch_size",
                     "learning_rate", "max_logit_scale", "log_every", "checkpoint_every",
                     "embed_batch_size", "search_batch_size"):
            require_positive(f"{prefix}.{name}", getattr(self, name))
        if self.batch_size < 2:
            fail(f"{prefix}.batch_size", self.batch_size,
                 "must be >= 2 (contrastive training needs negatives in the batch)")
        require_positive(f"{prefix}.warmup_steps", self.warmup_steps, allow_zero=True)
        require_positive(f"{prefix}.weight_decay", self.weight_decay, allow_zero=True)


def retrieval_config(cfg: ml_collections.ConfigDict) -> RetrievalConfig:
    return section(cfg, "retrieval", RetrievalConfig)


# --------------------------------------------------------------------------------------------------
# cm3: document layout, CM3 masking and packing into rows (cm3leon_jax/data/input/)
# --------------------------------------------------------------------------------------------------

OverlongPolicy = Literal["truncate", "drop"]
CM3_OVERLONG_POLICIES = typing.get_args(OverlongPolicy)


@dataclasses.dataclass(frozen=True)
class CM3Config(Section):
    """How a training example is laid out, CM3-masked and packed into `seq_len` rows.

    image_first_probability: chance that an example's documents put the image before the caption
      (`<boi> codes <eoi> <break> caption`) instead of after it; one draw per example, so the
      retrieved documents show the same direction as the query. 0.5 trains both directions equally.
    unmasked_rate: fraction of documents left as plain causal LM (no spans). They keep the model
      good at the sentinel-free left-to-right generation that text-to-image sampling uses.
    poisson_lambda, max_spans: a masked document gets n = clamp(Poisson(poisson_lambda), 1,
      max_spans) spans (CM3: Poisson(1) clamped to [1, 16]). The vocabulary must hold at least
      max_spans sentinels `<mask:0>..`.
    max_span_fraction: upper bound on one span's length as a fraction of the segment (text run or
      image) it lies in; a longer draw is cut at its end. 1.0 = no bound (CM3).
    placeholder_loss_weight: loss weight of the sentinel left in the document body where a span was
      cut out. 1.0 = loss on every token (CM3leon); 0.0 = the CM3 paper's choice (the placeholder
      sits at a random place, so predicting it carries no signal).
    seq_len: tokens per training row (4096 in CM3leon).
    pack: True packs several documents per row (segment ids 1, 2, ... and positions restarting per
      document); False pads one document per row.
    allow_split_documents: whether a document may continue from one row into the next. When False
      a document longer than seq_len is handled by `overlong`.
    overlong: `truncate` (keep the first seq_len tokens) or `drop` a document longer than seq_len
      when documents may not be split. Both are counted by the packer.
    max_open_rows: rows the packer keeps open at once for first-fit packing (1 = next-fit). More
      open rows waste less padding; the rows leave in a deterministic order either way.
    with_retrieval: pretraining rows carry each document's retrieved documents (where the prepared
      shards hold them). False trains on the bare documents of the same shards: the no-retrieval
      arm of the retrieval ablation, with everything else equal.
    """

    image_first_probability: float = 0.5
    unmasked_rate: float = 0.1
    poisson_lambda: float = 1.0
    max_spans: int = 16
    max_span_fraction: float = 1.0
    placeholder_loss_weight: float = 1.0
    seq_len: int = 4096
    pack: bool = True
    allow_split_documents: bool = False
    overlong: OverlongPolicy = "truncate"
    max_open_rows: int = 8
    with_retrieval: bool = True

    def check(self, prefix: str) -> None:
        require_range(f"{prefix}.image_first_probability", self.image_first_probability, 0.0, 1.0)
        require_range(f"{prefix}.unmasked_rate", self.unmasked_rate, 0.0, 1.0)
        require_positive(f"{prefix}.poisson_lambda", self.poisson_lambda)
        require_range(f"{prefix}.max_spans", self.max_spans, 1, 1024)
        if not 0.0 < self.max_span_fraction <= 1.0:
            fail(f"{prefix}.max_span_fraction", self.max_span_fraction, "must be in (0, 1]")
        require_range(f"{prefix}.placeholder_loss_weight", self.placeholder_loss_weight, 0.0, 1.0)
        require_positive(f"{prefix}.seq_len", self.seq_len)
        require_range(f"{prefix}.max_open_rows", self.max_open_rows, 1, 1024)


def cm3_config(cfg: ml_collections.ConfigDict) -> CM3Config:
    return section(cfg, "cm3", CM3Config)


# --------------------------------------------------------------------------------------------------
# sft: the instruction-tuning mixture and its templates (cm3leon_jax/data/input/sft_tasks.py)
# --------------------------------------------------------------------------------------------------

SFT_TASKS = ("text_to_image", "captioning", "vqa", "editing", "grounded_generation")
# The placeholders each template must use: a template that forgets one would train the model on
# prompts that do not name what it is asked about.
SFT_TEMPLATE_FIELDS = {
    "text_to_image_template": ("caption",),
    "captioning_template": (),
    "vqa_template": ("question",),
    "vqa_answer_template": ("answer",),
    "editing_template": ("instruction",),
    "grounded_generation_template": ("caption",),
}


@dataclasses.dataclass(frozen=True)
class SFTConfig(Section):
    """Instruction-tuning examples built from the prepared shards (`data/input/sft_tasks.py`).

    Every example is `prompt segments <break> output <eos>` with loss on the output and its `<eos>`
    only (CM3leon's SFT recipe). One example per record: a task is drawn by the weights below among
    the tasks the record supports (a record without question/answer pairs cannot be a VQA example),
    so on data that supports every task the weights are the exact expected shares.

    text_to_image / captioning / vqa / editing / grounded_generation: mixture weights (>= 0, not all
      0; only ratios matter).
    text_to_image_template: the instruction; `{caption}` is replaced by the record's caption ids.
      The output is the record's image.
    captioning_template: the instruction ("Describe the given picture."), then the image; the output
      is the caption.
    vqa_template / vqa_answer_template: after the image, the question prompt (`{question}`) and, as
      output, the answer (`{answer}`); one question/answer pair of the record per example.
    editing_template: the instruction (`{instruction}` = the record's edit instruction), then the
      source image; the output is the edited image.
    grounded_generation_template: like text-to-image, for captions that name positions (those
      matching `grounding_pattern`, case-insensitive); the instruction says the positions matter.
    grounding_pattern: regular expression a decoded caption must match to serve as a spatially
      grounded prompt (the shapes captions name 3x3 grid positions).
    """

    text_to_image: float = 1.0
    captioning: float = 1.0
    vqa: float = 1.0
    editing: float = 1.0
    grounded_generation: float = 1.0
    text_to_image_template: str = "Generate an image: {caption}"
    captioning_template: str = "Describe the given picture."
    vqa_template: str = "Question: {question} Answer:"
    vqa_answer_template: str = "{answer}."
    editing_template: str = "Edit the image following the instruction: {instruction}"
    grounded_generation_template: str = ("Generate an image with each object at the position the "
                                         "text gives: {caption}")
    grounding_pattern: str = r"\b(top|bottom|left|right|centre|center|middle)\b"

    def weights(self) -> dict[str, float]:
        """Task name -> mixture weight, in `SFT_TASKS` order."""
        return {task: getattr(self, task) for task in SFT_TASKS}

    def check(self, prefix: str) -> None:
        import re  # noqa: PLC0415 - only the check needs it
        import string  # noqa: PLC0415

        for task in SFT_TASKS:
            require_positive(f"{prefix}.{task}", getattr(self, task), allow_zero=True)
        if not any(self.weights().values()):
            fail(prefix, {t: 0.0 for t in SFT_TASKS}, "at least one task weight must be > 0")
        for name, wanted in SFT_TEMPLATE_FIELDS.items():
            template = getattr(self, name)
            try:
                fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
            except ValueError as error:
                fail(f"{prefix}.{name}", template, f"is not a valid template ({error})")
            if sorted(fields) != sorted(wanted):
                fail(f"{prefix}.{name}", template, "must contain exactly the placeholder(s) "
                     + (", ".join("{" + w + "}" for w in wanted) if wanted else "(none)"))
            if not template.strip(" ") and not wanted:
                fail(f"{prefix}.{name}", template, "must not be empty")
        try:
            re.compile(self.grounding_pattern)
        except re.error as error:
            fail(f"{prefix}.grounding_pattern", self.grounding_pattern,
                 f"is not a regular expression ({error})")


def sft_config(cfg: ml_collections.ConfigDict) -> SFTConfig:
    return section(cfg, "sft", SFTConfig) if "sft" in cfg else SFTConfig()


LRDecay = Literal["cosine", "linear", "constant"]
NonfinitePolicy = Literal["stop", "skip"]


@dataclasses.dataclass(frozen=True)
class TrainConfig(Section):
    """The shared training core (pretraining, instruction tuning, super-resolution).

    steps / batch_size: optimizer steps and global batch in rows (sequences), over all hosts.
    micro_batches: gradient accumulation: the batch is split into this many micro-batches scanned
      with `lax.scan`; one update per batch (k micro-batches == one k-times batch, exactly).
    lr / warmup_steps / decay / end_lr_fraction: linear warmup to `lr`, then cosine or linear decay
      to `lr * end_lr_fraction` at `steps` (or constant).
    b1 / b2 / eps / weight_decay / grad_clip: AdamW and global-norm clipping (paper: 0.9, 0.95,
      1e-5 for Chameleon, weight decay 0.1, clip 1.0).
    decay_embeddings / decay_norms: whether weight decay touches embeddings / norm scales (off by
      default: the usual practice; decoupled decay on a 1-d scale only shrinks it toward 0).
    on_nonfinite: `stop` raises naming the step (the update is never applied); `skip` drops that
      update, logs it and goes on.
    log_every / eval_every / eval_batches / checkpoint_every / keep_checkpoints / keep_best:
      reporting and Orbax retention (last K plus the best by eval loss).
    async_checkpoints: Orbax saves in a background thread while training continues.
    init_from: a workdir (or checkpoint directory) to take *params only* from (SFT starts from a
      pretraining run; optimizer and step start fresh).
    allow_data_change: resume even if the prepared data's fingerprint differs from the one recorded
      in the checkpoint (off: a silent change of data under a run is a bug).
    peak_flops_per_device: for the MFU figure; 0 = look it up by device kind (measured on CPU).
    """

    steps: int = 100
    batch_size: int = 8
    micro_batches: int = 1
    seed: int = 0
    lr: float = 1e-3
    warmup_steps: int = 10
    decay: LRDecay = "cosine"
    end_lr_fraction: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    decay_embeddings: bool = False
    decay_norms: bool = False
    on_nonfinite: NonfinitePolicy = "stop"
    log_every: int = 10
    eval_every: int = 0
    eval_batches: int = 4
    checkpoint_every: int = 50
    keep_checkpoints: int = 3
    keep_best: bool = True
    async_checkpoints: bool = True
    init_from: str = ""
    allow_data_change: bool = False
    peak_flops_per_device: float = 0.0

    def check(self, prefix: str) -> None:
        require_positive(f"{prefix}.steps", self.steps)
        require_positive(f"{prefix}.batch_size", self.batch_size)
        require_positive(f"{prefix}.micro_batches", self.micro_batches)
        require_divisible(f"{prefix}.batch_size", self.batch_size, f"{prefix}.micro_batches",
                          self.micro_batches)
        require_positive(f"{prefix}.lr", self.lr)
        require_positive(f"{prefix}.warmup_steps", self.warmup_steps, allow_zero=True)
        if self.warmup_steps > self.steps:
            fail(f"{prefix}.warmup_steps", self.warmup_steps,
                 f"must not exceed config.{prefix}.steps={self.steps}")
        require_range(f"{prefix}.end_lr_fraction", self.end_lr_fraction, 0.0, 1.0)
        require_range(f"{prefix}.b1", self.b1, 0.0, 0.999999)
        require_range(f"{prefix}.b2", self.b2, 0.0, 0.999999)
        require_positive(f"{prefix}.eps", self.eps)
        require_positive(f"{prefix}.weight_decay", self.weight_decay, allow_zero=True)
        require_positive(f"{prefix}.grad_clip", self.grad_clip, allow_zero=True)
        for name in ("log_every", "checkpoint_every", "keep_checkpoints"):
            require_positive(f"{prefix}.{name}", getattr(self, name))
        require_positive(f"{prefix}.eval_every", self.eval_every, allow_zero=True)
        require_positive(f"{prefix}.eval_batches", self.eval_batches)
        require_positive(f"{prefix}.peak_flops_per_device", self.peak_flops_per_device,
                         allow_zero=True)


def train_config(cfg: ml_collections.ConfigDict) -> TrainConfig:
    return section(cfg, "train", TrainConfig)


# sampling: how image and text tokens are drawn, for every command that decodes


@dataclasses.dataclass(frozen=True)
class SamplingConfig(Section):
    """How a token is drawn from the (guided, constrained) logits of one step. The field defaults
    turn each feature off (plain sampling at temperature 1); `IMAGE_SAMPLING` is the setting the
    commands sample images with unless told otherwise.

    temperature: logits / temperature before sampling; 0 = greedy (argmax).
    top_k: keep the k most likely tokens (0 = off).
    top_p: keep the smallest set of most likely tokens whose probability reaches top_p (1 = off).
    cfg_scale: classifier-free guidance alpha at image-code positions, logits = u + alpha (c - u)
      with u the unconditional stream (1 = off: the conditional stream alone; the paper's ~3).
    cd_k / cd_alpha: contrastive decoding TopK at image-code positions: candidates are the tokens
      whose expert probability is >= cd_alpha * (the cd_k-th largest expert probability), scored
      log p_expert - log p_amateur (amateur = the unconditional stream). cd_k = 0 turns it off.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    cfg_scale: float = 1.0
    cd_k: int = 0
    cd_alpha: float = 0.1

    def check(self, prefix: str = "sampling") -> "SamplingConfig":
        """Raises ConfigError naming the bad field; returns self for chaining."""
        require_positive(f"{prefix}.temperature", self.temperature, allow_zero=True)
        require_positive(f"{prefix}.top_k", self.top_k, allow_zero=True)
        if not 0.0 < self.top_p <= 1.0:
            fail(f"{prefix}.top_p", self.top_p, "must be in (0, 1] (1 = off)")
        require_positive(f"{prefix}.cfg_scale", self.cfg_scale, allow_zero=True)
        require_positive(f"{prefix}.cd_k", self.cd_k, allow_zero=True)
        require_range(f"{prefix}.cd_alpha", self.cd_alpha, 0.0, 1.0)
        return self

    @property
    def uses_unconditional(self) -> bool:
        """Whether decoding needs the unconditional stream (CFG or CD-K)."""
        return self.cfg_scale != 1.0 or self.cd_k > 0

    def sampling(self) -> "SamplingConfig":
        """The sampling fields alone (for sections that extend this one)."""
        return SamplingConfig(**{field.name: getattr(self, field.name)
                                 for field in dataclasses.fields(SamplingConfig)})


# What `generate`, `evaluate` and the ablation table sample image tokens with by default: CFG 3
# with nucleus 0.9, the setting docs/RESULTS.md measures. Text is decoded greedily.
IMAGE_SAMPLING = SamplingConfig(temperature=1.0, top_p=0.9, cfg_scale=3.0)
# CD-K's k when an evaluation chooses contrastive decoding (`evaluate --decoding=cd_k`).
CD_K_WHEN_CHOSEN = 8


# evaluate: what one evaluation of a trained model runs (python -m cm3leon_jax.evaluate's flags)

EvalTask = Literal["text2image", "caption", "vqa", "edit"]
EVAL_TASKS = typing.get_args(EvalTask)
EvalDecoding = Literal["top_p", "cd_k"]
EVAL_DECODINGS = typing.get_args(EvalDecoding)


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """What one evaluation runs: every field is a flag of `python -m cm3leon_jax.evaluate`, with
    its default from here; the image sampling defaults are `IMAGE_SAMPLING`'s.

    num_examples: test examples per task (the first ones of the split). seed: decoding seed.
    stage: pretrain or sft (None: sft when trained). retrieval: None = the generator's default.
    cfg_scale: classifier-free guidance alpha for image tokens (1 = off). decoding: "top_p"
      (temperature, top_p) or "cd_k" (contrastive decoding TopK: cd_k, cd_alpha; no top-p).
    num_samples: images per prompt, the best kept by the generator's rerank (CLIP when the
      workdir has a retrieval encoder: then FID and clip_score are judged by the reranker's
      own encoder; keep 1 for unbiased figures). questions_per_example: VQA (0 = all).
    grid_examples: examples drawn in the PNG grids (0 = none).
    """

    num_examples: int = 64
    seed: int = 0
    stage: Optional[Literal["pretrain", "sft"]] = None
    retrieval: Optional[bool] = None
    cfg_scale: float = IMAGE_SAMPLING.cfg_scale
    decoding: EvalDecoding = "top_p"
    temperature: float = IMAGE_SAMPLING.temperature
    top_p: float = IMAGE_SAMPLING.top_p
    cd_k: int = CD_K_WHEN_CHOSEN
    cd_alpha: float = IMAGE_SAMPLING.cd_alpha
    num_samples: int = 1
    questions_per_example: int = 0
    tasks: tuple[EvalTask, ...] = EVAL_TASKS
    batch_size: int = 16
    max_new_tokens: int = 48
    grid_examples: int = 8

    def check(self) -> "EvalSettings":
        """Raises ValueError naming the bad setting; returns self for chaining."""
        if self.num_examples < 2:
            raise ValueError(f"num_examples must be >= 2 (FID and CIDEr-D need two), got "
                             f"{self.num_examples}")
        if self.decoding not in EVAL_DECODINGS:
            raise ValueError(f"decoding must be one of {EVAL_DECODINGS}, got {self.decoding!r}")
        unknown = [t for t in self.tasks if t not in EVAL_TASKS]
        if unknown or not self.tasks:
            raise ValueError(f"tasks must be a non-empty subset of {EVAL_TASKS}, got {self.tasks}")
        if self.stage not in (None, "pretrain", "sft"):
            raise ValueError(f"stage must be pretrain or sft, got {self.stage!r}")
        if self.num_samples < 1 or self.questions_per_example < 0:
            raise ValueError("num_samples must be >= 1 and questions_per_example >= 0")
        self.image_sampling().check()
        return self

    def image_sampling(self) -> SamplingConfig:
        """How image tokens are drawn: nucleus sampling, or CD-K without top-p."""
        if self.decoding == "cd_k":
            return SamplingConfig(temperature=self.temperature, cfg_scale=self.cfg_scale,
                                  cd_k=self.cd_k, cd_alpha=self.cd_alpha)
        return SamplingConfig(temperature=self.temperature, top_p=self.top_p,
                              cfg_scale=self.cfg_scale)

    def label(self) -> str:
        """Short description of the image-decoding setting (table rows, TensorBoard tags)."""
        decoding = f"cdk{self.cd_k}" if self.decoding == "cd_k" else f"topp{self.top_p:g}"
        retrieval = {None: "auto", True: "on", False: "off"}[self.retrieval]
        return f"{self.stage or 'auto'}_ret-{retrieval}_cfg{self.cfg_scale:g}_{decoding}"


@dataclasses.dataclass(frozen=True)
class SamplesConfig(SamplingConfig):
    """`config.samples`: image samples written at every eval; the sampling fields are
    `SamplingConfig`'s (off by default: plain sampling, so grids show the raw model).

    num_captions: validation captions to sample images for (0 = off).
    num_samples: images per caption, best first by mean log-probability (no bi-encoder is loaded
      during training).
    seed: sampling seed (the same for every eval, so grids differ only by the model).
    scale: nearest-neighbour enlargement of each image in the grid (32x32 images are small).
    """

    num_captions: int = 0
    num_samples: int = 2
    seed: int = 0
    scale: int = 4

    def check(self, prefix: str = "samples") -> "SamplesConfig":
        super().check(prefix)
        require_positive(f"{prefix}.num_captions", self.num_captions, allow_zero=True)
        require_positive(f"{prefix}.num_samples", self.num_samples)
        require_positive(f"{prefix}.scale", self.scale)
        return self


def samples_config(cfg: ml_collections.ConfigDict) -> SamplesConfig:
    """`config.samples`, or the defaults (off) when the config has no such section."""
    return section(cfg, "samples", SamplesConfig) if "samples" in cfg else SamplesConfig()


# superres: the super-resolution stage (cm3leon_jax/superres/)


@dataclasses.dataclass(frozen=True)
class SuperresConfig(Section):
    """The super-resolution stage (`config.superres`).

    low_tokenizer: the base-resolution VQ-GAN (an export or a train_vqgan workdir); empty = the
      base vocabulary's (what the base model's codes come from: the only choice that lets
      `generate --upscale` use the upsampler on the base model's output).
    high_tokenizer: the high-resolution VQ-GAN; empty = `<workdir>/tokenizers_hr`.
    vocab_dir: the base vocabulary (text tokenizer and id layout); empty = the one named by
      `<workdir>/prepared/manifest.json`, else the workdir's trained or imported one
      (`paths.Workdir.vocab_candidates`).
    use_caption: condition on the caption too (`caption <break>` before the low codes).
    caption_dropout: share of training rows whose caption is dropped (so captionless prompts work).
    max_caption_tokens: captions are cut to this many text ids.
    seq_len: tokens per row; 0 = the longest row, rounded up to a multiple of 8.
    encode_batch_size: images per VQ-GAN call when encoding the pairs.
    eval_split / eval_images (0 = all) / eval_batch_size: the final evaluation.
    eval_temperature: sampling temperature of the evaluation (0 = greedy).
    grid_images: test images shown in W/superres/samples.png.
    """

    low_tokenizer: str = ""
    high_tokenizer: str = ""
    vocab_dir: str = ""
    use_caption: bool = False
    caption_dropout: float = 0.2
    max_caption_tokens: int = 48
    seq_len: int = 0
    encode_batch_size: int = 100
    eval_split: Split = "test"
    eval_images: int = 0
    eval_batch_size: int = 50
    eval_temperature: float = 0.0
    grid_images: int = 8

    def check(self, prefix: str) -> None:
        require_range(f"{prefix}.caption_dropout", self.caption_dropout, 0.0, 1.0)
        require_positive(f"{prefix}.max_caption_tokens", self.max_caption_tokens)
        require_positive(f"{prefix}.seq_len", self.seq_len, allow_zero=True)
        require_positive(f"{prefix}.encode_batch_size", self.encode_batch_size)
        require_positive(f"{prefix}.eval_images", self.eval_images, allow_zero=True)
        require_positive(f"{prefix}.eval_batch_size", self.eval_batch_size)
        require_positive(f"{prefix}.eval_temperature", self.eval_temperature,
                                    allow_zero=True)


def superres_config(cfg: ml_collections.ConfigDict) -> SuperresConfig:
    return section(cfg, "superres", SuperresConfig)


DEMO_STAGES = ("data", "tokenizers", "retrieval", "prepare", "pretrain", "sft", "evaluate",
               "superres")


@dataclasses.dataclass(frozen=True)
class DemoConfig(Section):
    """`config.demo`: what `python -m cm3leon_jax.demo` runs on top of the stages' own sections.

    stages: the stages to run, a prefix of `DEMO_STAGES` in its order (each needs those before).
    grid_examples: training examples drawn in W/demo/examples.png, and examples per eval grid.
    eval_examples: test examples the evaluation stage judges (>= 2: FID and CIDEr-D need two).
    top_p: the image tokens' nucleus mass at evaluation (the demo's model, measured: 0.3).
    pretrain_train / sft_train: the `config.train` of each training stage.
    superres: the super-resolution stage's settings (`high_tokenizer_train`: the high-resolution
      VQ-GAN's `vqgan_train`; `upsampler`: the upsampler's config; `grid_captions`).
    """

    stages: tuple[str, ...] = DEMO_STAGES
    grid_examples: int = 16
    eval_examples: int = 64
    top_p: float = IMAGE_SAMPLING.top_p
    # Nested sections, checked by `demo_config` (train) and by the demo where it builds them.
    pretrain_train: Any = None
    sft_train: Any = None
    superres: Any = None

    def check(self, prefix: str) -> None:
        unknown = [stage for stage in self.stages if stage not in DEMO_STAGES]
        if unknown:
            fail(f"{prefix}.stages", self.stages,
                 f"unknown stage(s) {unknown}; stages in order: {', '.join(DEMO_STAGES)}")
        require_positive(f"{prefix}.grid_examples", self.grid_examples, allow_zero=True)
        if "evaluate" in self.stages and self.eval_examples < 2:
            fail(f"{prefix}.eval_examples", self.eval_examples,
                 "must be >= 2 (FID and CIDEr-D need two test examples)")
        if not 0.0 < self.top_p <= 1.0:
            fail(f"{prefix}.top_p", self.top_p, "must be in (0, 1]: the image tokens' nucleus mass")


def demo_config(cfg: ml_collections.ConfigDict) -> DemoConfig:
    """`config.demo` checked; its nested sections (`pretrain_train`, `sft_train`: TrainConfig;
    `superres`) are checked by `from_dict` / the demo where it builds their configs."""
    checked = section(cfg, "demo", DemoConfig)
    for name in ("pretrain_train", "sft_train"):
        if getattr(checked, name) is None:
            raise ConfigError(f"config.demo.{name} is missing: the demo needs the `train` "
                              "section of that stage")
        from_dict(getattr(checked, name), TrainConfig, prefix=f"demo.{name}")
    if "superres" in checked.stages and checked.superres is None:
        raise ConfigError("config.demo.superres is missing: the demo's super-resolution stage "
                          "needs its settings")
    return checked


# Every typed top-level section, by its name in the config.
SECTIONS: dict[str, type[Section]] = {
    "data": DataConfig, "prepare": PrepareConfig, "model": ModelConfig, "mesh": MeshConfig,
    "vqgan": VQGANConfig, "vqgan_train": VQGANTrainConfig, "text_tokenizer": TextTokenizerConfig,
    "vocab": VocabConfig, "retrieval": RetrievalConfig, "cm3": CM3Config, "sft": SFTConfig,
    "train": TrainConfig, "samples": SamplesConfig, "superres": SuperresConfig,
    "demo": DemoConfig,
}


def complete(cfg: ml_collections.ConfigDict,
             add_sections: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Adds every field a typed section lacks, with its default, to each section `cfg` has, in
    place (and returns `cfg`): a config file need only write what it changes, and every field
    is still settable from the command line (`--config.data.folder=...`: ml_collections only
    overrides fields that exist). `add_sections`: typed sections to add whole, with their
    defaults, when the file has none (those the command line sets a field of). Typed reads
    (`section`) give the same values either way."""
    for name in add_sections:
        if name in SECTIONS and name not in cfg:
            cfg[name] = ml_collections.ConfigDict()
    for name, cls in SECTIONS.items():
        _fill(cfg.get(name), cls)
    demo = cfg.get("demo")
    if isinstance(demo, ml_collections.ConfigDict):  # the demo's stages carry their own sections
        _fill(demo.get("pretrain_train"), TrainConfig)
        _fill(demo.get("sft_train"), TrainConfig)
        superres = demo.get("superres")
        if isinstance(superres, ml_collections.ConfigDict):
            _fill(superres.get("high_tokenizer_train"), VQGANTrainConfig)
            if isinstance(superres.get("upsampler"), ml_collections.ConfigDict):
                complete(superres.upsampler)
    return cfg


def _fill(section_cfg: Any, cls: type[Section]) -> None:
    """Adds `cls`'s missing fields, with their defaults, to `section_cfg` (a ConfigDict)."""
    if not isinstance(section_cfg, ml_collections.ConfigDict):
        return
    for field in dataclasses.fields(cls):
        if field.name not in section_cfg:
            section_cfg[field.name] = (field.default if field.default is not dataclasses.MISSING
                                       else field.default_factory())
