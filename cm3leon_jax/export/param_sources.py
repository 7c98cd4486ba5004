"""Where exported parameters come from: a run's Orbax checkpoint, read one leaf at a time, or a
params pytree already in memory.

An export must not need the memory of a training job: a 7B checkpoint saved on a pod holds the
params (28 GB in f32) plus two Adam moments, sharded over many devices. `OrbaxParams` therefore
reads *one tensor per call* and never the optimizer state:

* `layer_reader(path)`: one layer of a stacked (`scan_layers`) leaf, read by opening the saved
  array with tensorstore (the store Orbax wrote: zarr in an OCDBT database) and slicing it, so
  only the chunks of that layer are decoded: a 7B export holds one layer's tensor at a time;
* `read(path)`: a whole leaf through Orbax's partial restore (as a host numpy array), for leaves
  without a layer axis, and as the fallback when the store cannot be opened directly.

A leaf saved sharded over a mesh is reassembled from its chunks, whatever mesh wrote it.
`InMemoryParams` serves a pytree the same way (e.g. `init_params`, or a sharded `jax.Array` tree:
each tensor is fetched to the host when asked for, one at a time).

Both count what they read (`reads`, `bytes_read`, `largest_read`), so a test can check that an
export never held more than one tensor.

Checkpoint lookup (`find_checkpoint`): `--workdir W` with `--stage` (`sft` when W/sft holds a
checkpoint, else `pretrain`), or a run directory, or a `checkpoints` directory; the newest step
unless `--step` is given. The checkpoint's `meta` item carries the run's full config, so the export
needs no `--config` (one given on the command line wins, e.g. to export an old run).
"""

from __future__ import annotations

import dataclasses
import logging as py_logging
import os
from typing import Any, Callable, Optional, Protocol

from etils import epath
import jax
import numpy as np

from cm3leon_jax import paths
from cm3leon_jax.train.checkpoint import ITEMS

Path = tuple[str, ...]
STAGES = ("pretrain", "sft")


class MissingCheckpoint(FileNotFoundError):
    """No readable checkpoint where the export was pointed."""


class ParamSource(Protocol):
    def shapes(self) -> dict[Path, tuple[tuple[int, ...], np.dtype]]: ...

    def read(self, path: Path) -> np.ndarray: ...

    def layer_reader(self, path: Path) -> Callable[[int], np.ndarray]: ...


def _path_names(key_path) -> Path:
    return tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in key_path)


class _ReadCounter:
    def __init__(self):
        self.bytes_read = 0
        self.largest_read = 0
        self.reads = 0

    def count(self, array: np.ndarray) -> np.ndarray:
        self.bytes_read += array.nbytes
        self.largest_read = max(self.largest_read, array.nbytes)
        self.reads += 1
        return array


class InMemoryParams(_ReadCounter):
    """A params pytree (numpy or jax arrays, possibly sharded) as a `ParamSource`."""

    def __init__(self, params: Any):
        super().__init__()
        flat = jax.tree_util.tree_flatten_with_path(params)[0]
        self._leaves = {_path_names(path): leaf for path, leaf in flat}

    def shapes(self) -> dict[Path, tuple[tuple[int, ...], np.dtype]]:
        return {path: (tuple(leaf.shape), np.dtype(leaf.dtype))
                for path, leaf in self._leaves.items()}

    def read(self, path: Path) -> np.ndarray:
        if path not in self._leaves:
            raise KeyError(f"params have no leaf {'/'.join(path)}")
        return self.count(np.asarray(jax.device_get(self._leaves[path])))

    def layer_reader(self, path: Path) -> Callable[[int], np.ndarray]:
        leaf = self._leaves[path]
        return lambda layer: self.count(np.asarray(jax.device_get(leaf[layer])))


@dataclasses.dataclass(frozen=True)
class CheckpointLocation:
    checkpoints_dir: epath.Path
    step: int
    stage: str  # "pretrain", "sft" or the run directory's name

    @property
    def state_dir(self) -> epath.Path:
        return self.checkpoints_dir / str(self.step) / "state"


class _DropMissingItemMetadataWarning(py_logging.Filter):
    """Orbax warns on every partial restore that a per-item metadata file, which composite
    checkpoints never write, is absent; reading one leaf per call would flood the log."""

    def filter(self, record: py_logging.LogRecord) -> bool:
        return "Metadata file does not exist" not in record.getMessage()


_ORBAX_WARNING_FILTER = _DropMissingItemMetadataWarning()


def _quiet_orbax() -> None:
    py_logging.getLogger("absl").addFilter(_ORBAX_WARNING_FILTER)


def _manager(checkpoints_dir: epath.Path):
    import orbax.checkpoint as ocp  # noqa: PLC0415

    options = ocp.CheckpointManagerOptions(read_only=True, create=False)
    return ocp.CheckpointManager(checkpoints_dir, item_names=ITEMS, options=options)


def find_checkpoint(workdir: str, stage: Optional[str] = None,
                    step: Optional[int] = None) -> CheckpointLocation:
    """The checkpoint to export (see the module docstring); MissingCheckpoint says where it
    looked and what to run."""
    if stage is not None and stage not in STAGES:
        raise ValueError(f"--stage={stage!r}: must be one of {', '.join(STAGES)}")
    root = epath.Path(workdir)
    if not root.exists():
        raise MissingCheckpoint(f"--workdir {workdir} does not exist")
    looked = []
    for checkpoints_dir, name in paths.checkpoint_dirs(root, stage):
        looked.append(str(checkpoints_dir))
        if not checkpoints_dir.exists():
            continue
        manager = _manager(checkpoints_dir)
        steps = sorted(manager.all_steps())
        manager.close()
        if not steps:
            continue
        if step is None:
            return CheckpointLocation(checkpoints_dir, steps[-1], name)
        if step not in steps:
            raise MissingCheckpoint(f"{checkpoints_dir} has no step {step}; it has {steps}")
        return CheckpointLocation(checkpoints_dir, step, name)
    raise MissingCheckpoint(
        f"no checkpoint found (looked in {', '.join(looked)}): train first with "
        "`python -m cm3leon_jax.pretrain` (or sft) --workdir W, or pass the run directory")


def read_meta(location: CheckpointLocation) -> dict:
    """The checkpoint's `meta` item ({"model": signature, "config": full config, ...})."""
    import orbax.checkpoint as ocp  # noqa: PLC0415

    manager = _manager(location.checkpoints_dir)
    try:
        restored = manager.restore(location.step,
                                   args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    finally:
        manager.close()
    return restored["meta"] or {}


class OrbaxParams(_ReadCounter):
    """The `params` of a saved train state, restored leaf by leaf as host numpy arrays."""

    def __init__(self, location: CheckpointLocation):
        import orbax.checkpoint as ocp  # noqa: PLC0415

        super().__init__()
        _quiet_orbax()
        self._ocp = ocp
        self._directory = location.state_dir
        self._checkpointer = ocp.PyTreeCheckpointer()
        tree = self._checkpointer.metadata(self._directory).item_metadata
        if "params" not in tree:
            raise MissingCheckpoint(f"{self._directory} holds no `params` (keys: "
                                    f"{sorted(tree)}); is it a decoder checkpoint?")
        flat = jax.tree_util.tree_flatten_with_path(
            dict(tree["params"]), is_leaf=lambda x: hasattr(x, "shape"))[0]
        self._shapes = {_path_names(path): (tuple(meta.shape), np.dtype(meta.dtype))
                        for path, meta in flat}
        self._stored_names = {_path_names(path): getattr(meta, "name", None)
                              for path, meta in flat}

    def shapes(self) -> dict[Path, tuple[tuple[int, ...], np.dtype]]:
        return dict(self._shapes)

    def read(self, path: Path) -> np.ndarray:
        if path not in self._shapes:
            raise KeyError(f"checkpoint params have no leaf {'/'.join(path)}")
        item: dict = {}
        node = item
        for key in ("params",) + path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = 0
        restore_args = jax.tree.map(
            lambda _: self._ocp.RestoreArgs(restore_type=np.ndarray), item)
        restored = self._checkpointer.restore(
            self._directory, args=self._ocp.args.PyTreeRestore(
                item=item, restore_args=restore_args, partial_restore=True))
        leaf = restored["params"]
        for key in path:
            leaf = leaf[key]
        return self.count(np.asarray(leaf))

    def _open_store(self, path: Path):
        """The saved array as a tensorstore (zarr v2 or v3, in OCDBT or plain files), or None."""
        import tensorstore  # noqa: PLC0415 - Orbax's own storage library

        name = self._stored_names.get(path) or ".".join(("params",) + path)
        directory = str(self._directory)
        base = directory if "://" in directory else "file://" + os.path.abspath(directory)
        if (self._directory / "manifest.ocdbt").exists():
            kvstore = {"driver": "ocdbt", "base": base.rstrip("/") + "/", "path": name}
        else:
            kvstore = base.rstrip("/") + "/" + name + "/"
        for driver in ("zarr", "zarr3"):
            try:
                store = tensorstore.open({"driver": driver, "kvstore": kvstore},
                                         open=True, read=True).result()
            except Exception:  # noqa: BLE001 - another format or layout: try the next / fall back
                continue
            if tuple(store.shape) == self._shapes[path][0]:
                return store
        return None

    def layer_reader(self, path: Path) -> Callable[[int], np.ndarray]:
        """layer -> that layer of a stacked leaf, reading only its chunks (see module docs)."""
        store = self._open_store(path)
        if store is None:
            stacked = self.read(path)
            return lambda layer: stacked[layer]
        dtype = self._shapes[path][1]
        return lambda layer: self.count(np.asarray(store[layer].read().result(), dtype))


def read_all(source: ParamSource, dtype=None) -> dict:
    """Every leaf of `source` as one nested dict of numpy arrays (the whole params in memory:
    for checks on models that fit, never for the export itself)."""
    params: dict = {}
    for path in sorted(source.shapes()):
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        leaf = source.read(path)
        node[path[-1]] = leaf if dtype is None else leaf.astype(dtype)
    return params
