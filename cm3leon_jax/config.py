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
from typing import Any, Sequence, TypeVar

import ml_collections


class ConfigError(ValueError):
    """A config value that cannot work; the message names the field and what is allowed."""


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
    """Checks `value` against a (string-evaluated) dataclass annotation; ints are valid floats."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return True
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
    return True


def _describe(annotation: Any) -> str:
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
            fail(f"{prefix}.{key}", value, f"must be of type {_describe(annotation)}")
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
# data: which documents to read (issue 3; provenance fields from issue 14)
# --------------------------------------------------------------------------------------------------

DATA_SOURCES = ("shapes", "folder")


@dataclasses.dataclass(frozen=True)
class DataConfig(Section):
    """Where documents come from.

    source: `shapes` (the embedded generated set) or `folder` (a user folder of images plus
      `captions.jsonl`, see `cm3leon_jax/data/folder.py`).
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
    """

    source: str = "shapes"
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

    def check(self, prefix: str) -> None:
        require_choice(f"{prefix}.source", self.source, DATA_SOURCES)
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


def data_config(cfg: ml_collections.ConfigDict) -> DataConfig:
    return section(cfg, "data", DataConfig)


# --------------------------------------------------------------------------------------------------
# Sections added by later stages. Each block below is owned by one stage; keep them in this order.
# --------------------------------------------------------------------------------------------------

# <<section:model>>

# <<section:tokenizers>>

# <<section:retrieval>>

# <<section:cm3>>

# <<section:train>>
