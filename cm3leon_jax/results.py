"""Final figures of a run: `<workdir>/metrics.json`, one JSON object per stage.

Every train/eval entry point calls `write_metrics(workdir, stage, figures)` at the end. Stages are
merged into one file, so a demo workdir's metrics.json shows every stage it ran.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

from etils import epath

from cm3leon_jax import paths


def _plain(value: Any) -> Any:
    """numpy / jax scalars and arrays to JSON-able Python values (NaN/inf kept as strings)."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def read_metrics(workdir: str) -> dict[str, Any]:
    path = paths.Workdir(workdir).metrics
    return json.loads(path.read_text()) if path.exists() else {}


def write_metrics(workdir: str, stage: str, figures: Mapping[str, Any]) -> epath.Path:
    """Writes (atomically, by rename) `figures` under `stage` into `<workdir>/metrics.json`."""
    path = paths.Workdir(workdir).metrics
    path.parent.mkdir(parents=True, exist_ok=True)
    merged = read_metrics(workdir)
    merged[stage] = _plain(dict(figures))
    tmp = path.parent / (path.name + ".tmp")
    tmp.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path
