"""Hyper-parameter sweeps: how they are written, named, checked and summarised.

A sweep file `experiments/sweeps/<name>.py` defines `get_sweep()`, returning a list of override
dicts, one per run, keyed by dotted config fields:

    from cm3leon_jax.sweep.spec import product, zip_

    def get_sweep():
        return product({"data.image_size": [16, 32]}, zip_({"train.lr": [1e-3, 3e-4],
                                                            "train.warmup_steps": [100, 400]}))

`product` takes the Cartesian product of its factors and `zip_` pairs them up element by element.
A factor is either a list of override dicts or a mapping `{field: [values...]}`, which stands for
one factor per field. The runner (`python -m cm3leon_jax.sweep`, see `sweep/runner.py`) turns each
override dict into `--config.<field>=<value>` flags and a run directory named after it.

Everything that touches files goes through `etils.epath`, so the sweep root may be `gs://...`.
"""

from __future__ import annotations

import copy
import csv
import difflib
import hashlib
import importlib.util
import io
import itertools
import math
import pathlib
import re
from typing import Any, Iterable, Mapping, Sequence, Union

from etils import epath
import ml_collections

from cm3leon_jax import results
from cm3leon_jax.config import ConfigError

Overrides = dict[str, Any]
Factor = Union[Mapping[str, Sequence[Any]], Sequence[Mapping[str, Any]]]

_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")
_MAX_NAME = 200
_SCALARS = (bool, int, float, str)


class SweepError(ConfigError):
    """A sweep file or sweep entry that cannot run; the message says which entry and why."""


# --------------------------------------------------------------------------------------------------
# Writing sweeps
# --------------------------------------------------------------------------------------------------

def _axes(factor: Factor, helper: str) -> list[list[Overrides]]:
    """A factor as a list of axes, each axis a list of override dicts."""
    if isinstance(factor, Mapping):
        axes = []
        for field, values in factor.items():
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
                raise SweepError(
                    f"{helper}(): the values of {field!r} must be a list, got {values!r}; "
                    f"write {{{field!r}: [{values!r}]}} for a single value")
            axes.append([{field: value} for value in values])
        return axes
    if isinstance(factor, Sequence) and not isinstance(factor, (str, bytes)):
        entries = list(factor)
        for entry in entries:
            if not isinstance(entry, Mapping):
                raise SweepError(f"{helper}(): a list factor must hold override dicts, got {entry!r}")
        return [[dict(entry) for entry in entries]]
    raise SweepError(f"{helper}(): a factor is a {{field: [values]}} mapping or a list of "
                     f"override dicts, got {factor!r}")


def _merge(parts: Iterable[Mapping[str, Any]], helper: str) -> Overrides:
    merged: Overrides = {}
    for part in parts:
        for field, value in part.items():
            if field in merged:
                raise SweepError(f"{helper}(): {field!r} is set by two factors; each field may "
                                 "vary in one factor only")
            merged[field] = value
    return merged


def product(*factors: Factor) -> list[Overrides]:
    """Every combination of the factors' entries; the last factor varies fastest."""
    axes = [axis for factor in factors for axis in _axes(factor, "product")]
    return [_merge(combo, "product") for combo in itertools.product(*axes)]


def zip_(*factors: Factor) -> list[Overrides]:
    """The i-th entries of all factors together; every factor must have the same length."""
    axes = [axis for factor in factors for axis in _axes(factor, "zip_")]
    lengths = sorted({len(axis) for axis in axes})
    if len(lengths) > 1:
        raise SweepError(f"zip_(): factors have different lengths {lengths}; zip_ pairs entries "
                         "one to one (use product() for all combinations)")
    return [_merge(combo, "zip_") for combo in zip(*axes)]


# --------------------------------------------------------------------------------------------------
# Loading and checking
# --------------------------------------------------------------------------------------------------

def _check_value(where: str, field: str, value: Any) -> None:
    if isinstance(value, _SCALARS):
        if isinstance(value, float) and not math.isfinite(value):
            raise SweepError(f"{where}: {field}={value!r} is not a finite number")
        return
    if isinstance(value, (tuple, list)) and all(isinstance(v, _SCALARS) for v in value):
        return
    raise SweepError(f"{where}: {field}={value!r} cannot be passed on a command line; use a bool, "
                     "int, float, str, or a tuple of those")


def check_entries(entries: Any, source: str) -> list[Overrides]:
    """Checks the shape of a sweep (list of {dotted.field: scalar}); returns it as plain dicts."""
    if not isinstance(entries, (list, tuple)) or not entries:
        raise SweepError(f"{source}: get_sweep() must return a non-empty list of override dicts, "
                         f"got {entries!r}")
    checked = []
    for index, entry in enumerate(entries):
        where = f"{source}, entry {index}"
        if not isinstance(entry, Mapping):
            raise SweepError(f"{where}: expected a dict of overrides, got {entry!r}")
        for field, value in entry.items():
            if not isinstance(field, str) or not _FIELD.match(field):
                raise SweepError(f"{where}: {field!r} is not a dotted config field such as "
                                 "'data.image_size'")
            if field.startswith("config."):
                raise SweepError(f"{where}: write {field[len('config.'):]!r}, without 'config.'")
            _check_value(where, field, value)
        checked.append(dict(entry))
    return checked


def load_sweep(path: str) -> list[Overrides]:
    """Imports a sweep file and returns its checked `get_sweep()` entries."""
    file = pathlib.Path(path)
    if not file.is_file():
        raise SweepError(f"sweep file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"sweep_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "get_sweep", None)):
        raise SweepError(f"{path} must define get_sweep() returning a list of override dicts")
    return check_entries(module.get_sweep(), path)


def check_against_config(cfg: ml_collections.ConfigDict, entries: Sequence[Overrides],
                         source: str) -> None:
    """Fails (before anything runs) when an entry names a field the config lacks or the wrong type."""
    for index, entry in enumerate(entries):
        trial = copy.deepcopy(cfg)
        for field, value in entry.items():
            *parents, leaf = field.split(".")
            node = trial
            for depth, part in enumerate(parents):
                if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                    raise SweepError(f"{source}, entry {index}: config has no section "
                                     f"config.{'.'.join(parents[:depth + 1])} (for {field})")
                node = node[part]
            if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
                known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
                close = difflib.get_close_matches(leaf, known, n=3)
                hint = (f"did you mean {', '.join(close)}?" if close
                        else f"fields there: {', '.join(known) or 'none'}")
                raise SweepError(f"{source}, entry {index}: config has no field config.{field}; "
                                 f"{hint}")
            try:
                node[leaf] = tuple(value) if isinstance(value, list) else value
            except (TypeError, ValueError) as error:
                raise SweepError(f"{source}, entry {index}: config.{field}={value!r} does not fit "
                                 f"the config's field ({error})") from None


# --------------------------------------------------------------------------------------------------
# Names and command lines
# --------------------------------------------------------------------------------------------------

def format_value(value: Any) -> str:
    """A value as `--config.field=` expects it (ml_collections parses by the field's type)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return repr(tuple(value))
    return str(value)


def override_flags(overrides: Mapping[str, Any]) -> list[str]:
    return [f"--config.{field}={format_value(value)}" for field, value in overrides.items()]


def run_name(overrides: Mapping[str, Any]) -> str:
    """A filesystem- and URL-safe directory name, e.g. `data.image_size=32,train.lr=0.001`."""
    if not overrides:
        return "base"
    parts = []
    for field, value in overrides.items():
        text = _NAME_UNSAFE.sub("_", format_value(value)).strip("_") or "empty"
        parts.append(f"{field}={text}")
    name = ",".join(parts)
    if len(name) > _MAX_NAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = f"{name[:_MAX_NAME - 11]}-{digest}"
    return name


def run_names(entries: Sequence[Overrides], source: str) -> list[str]:
    """Names of all entries; two entries that would share a directory are an error."""
    names = [run_name(entry) for entry in entries]
    first: dict[str, int] = {}
    for index, name in enumerate(names):
        if name in first:
            raise SweepError(f"{source}: entries {first[name]} and {index} both map to run "
                             f"directory {name!r}; remove the duplicate")
        first[name] = index
    return names


# --------------------------------------------------------------------------------------------------
# State of runs and the summary
# --------------------------------------------------------------------------------------------------

def is_finished(run_dir: Union[str, epath.Path], finished_stage: str = "") -> bool:
    """A run is finished when its metrics.json exists (and holds `finished_stage`, if given)."""
    try:
        metrics = results.read_metrics(str(run_dir))
    except Exception as error:  # tf.io.gfile / fsspec / OS errors all mean "cannot tell"
        hint = (" This machine needs read access to Cloud Storage: `gcloud auth application-default "
                "login`, or run the sweep command on a worker." if str(run_dir).startswith("gs://")
                else "")
        raise SweepError(f"cannot read {run_dir}/metrics.json to tell whether the run finished: "
                         f"{type(error).__name__}: {str(error).splitlines()[0]}.{hint}") from error
    return bool(metrics) and (not finished_stage or finished_stage in metrics)


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{stage: {figure: value}} -> {"stage/figure": value}; nested dicts join with '/'."""
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten_metrics(value, name))
        else:
            flat[name] = value
    return flat


def summary_table(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Columns (run, status, swept fields, then every metric) and the cells as CSV text."""
    columns: list[str] = []
    for row in rows:
        for column in row:
            if column not in columns:
                columns.append(column)
    cells = [["" if row.get(c) is None else _cell(row.get(c)) for c in columns] for row in rows]
    return columns, cells


def _cell(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(_cell(v) for v in value)
    return format_value(value)


def format_text_table(columns: Sequence[str], cells: Sequence[Sequence[str]]) -> str:
    """Aligned columns; numbers shortened to 4 significant digits for reading (the CSV is exact)."""
    shown = [[_short(cell) for cell in row] for row in cells]
    widths = [max([len(c)] + [len(row[i]) for row in shown]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in shown]
    return "\n".join(lines)


def _short(cell: str) -> str:
    try:
        number = float(cell)
    except ValueError:
        return cell
    if cell.lstrip("-").isdigit():
        return cell
    return f"{number:.4g}"


def write_csv(path: Union[str, epath.Path], columns: Sequence[str],
              cells: Sequence[Sequence[str]]) -> epath.Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(cells)
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(buffer.getvalue())
    return path
