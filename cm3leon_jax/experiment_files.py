"""One experiments/*.py config built on another.

Config files are loaded by path (`--config experiments/x.py`), not imported as a package, so a
config that extends a sibling (the 760M preset from the 350M one, SFT from pretraining) loads it
the same way, relative to its own file:

    from cm3leon_jax import experiment_files
    cfg = experiment_files.config(__file__, "pretrain_tiny")
    cfg = experiment_files.module(__file__, "cm3leon_350m").paper_preset("760m")
"""

from __future__ import annotations

import importlib.util
import pathlib
import types
from typing import Any

import ml_collections

# The repository's experiments/ folder (configs and sweeps), next to the package.
EXPERIMENTS = pathlib.Path(__file__).resolve().parent.parent / "experiments"


def module(of_file: str, name: str) -> types.ModuleType:
    """The module of `<name>.py` next to `of_file` (a config's `__file__`)."""
    path = pathlib.Path(of_file).with_name(name + ".py")
    if not path.exists():
        raise FileNotFoundError(f"{of_file} builds on {path}, which does not exist")
    spec = importlib.util.spec_from_file_location(f"experiments.{name}", path)
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


def config(of_file: str, name: str, arg: Any = None) -> ml_collections.ConfigDict:
    """`get_config(arg)` of `<name>.py` next to `of_file`."""
    return module(of_file, name).get_config(arg)
