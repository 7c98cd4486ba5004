"""Orbax checkpoints of a run: train state + data position + metadata, resumable and guarded.

* async saves (training continues while a background thread writes), every N steps and on demand;
* retention: the last `keep_checkpoints` plus the best by eval loss (Orbax preservation policies);
* resume from the latest readable step; an unreadable latest checkpoint (e.g. cut off mid-write on
  preemption) is skipped with a warning and the previous one is used (the Orbax handling is
  `run_control.CheckpointStore`, shared with the VQ-GAN and retrieval trainers);
* metadata (`meta`: model signature, data fingerprint) lets a resume refuse a workdir that holds a
  different model or data, with a message saying what differs.
"""

from __future__ import annotations

from typing import Any, Optional

from absl import logging
from etils import epath
import jax
import orbax.checkpoint as ocp

from cm3leon_jax import paths
from cm3leon_jax.config import InputError, TrainConfig
from cm3leon_jax.train import run_control

ITEMS = ("state", "data", "meta")


class IncompatibleCheckpoint(InputError):
    """The workdir's checkpoint was written by a different model or data set."""


class Checkpoints:
    """The decoder loop's checkpoints (`run_control.CheckpointStore`): items ITEMS, the last
    `keep_checkpoints` plus the best by eval loss, async saves as `train` says."""

    def __init__(self, directory: str, train: TrainConfig):
        self.store = run_control.CheckpointStore(
            directory, train.keep_checkpoints,
            best_metric="eval_loss" if train.keep_best else None, item_names=ITEMS,
            async_save=train.async_checkpoints)
        self.directory, self.manager = self.store.directory, self.store.manager

    def steps(self) -> list[int]:
        return self.store.steps()

    def save(self, step: int, state, data_state: dict, meta: dict,
             eval_loss: Optional[float] = None) -> None:
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  data=ocp.args.JsonSave(data_state),
                                  meta=ocp.args.JsonSave(meta))
        metrics = None if eval_loss is None else {"eval_loss": float(eval_loss)}
        self.store.save(step, args, metrics=metrics)

    def wait(self) -> None:
        self.store.wait()

    def read_meta(self, step: int) -> dict:
        return self.store.restore(step, ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore_latest(self, abstract_state) -> Optional[tuple[Any, dict, dict, int]]:
        """(state, data_state, meta, step) of the newest readable checkpoint, or None if none."""
        found = self.store.restore_latest(ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
            meta=ocp.args.JsonRestore()))
        if found is None:
            return None
        restored, step = found
        return restored["state"], restored["data"], restored["meta"], step

    def close(self) -> None:
        self.store.close()


def check_compatible(meta: dict, model_signature: dict, data_fingerprint: str,
                     allow_data_change: bool, where: str) -> None:
    """Raises IncompatibleCheckpoint naming what differs between a checkpoint and this run."""
    saved = meta.get("model", {})
    differences = [f"{key}: checkpoint {saved.get(key)!r} vs config {value!r}"
                   for key, value in model_signature.items() if saved.get(key) != value]
    if differences:
        raise IncompatibleCheckpoint(
            f"{where} holds a checkpoint of a different model ({'; '.join(differences)}); use "
            "another --workdir, or move the checkpoints away to start afresh")
    saved_data = meta.get("data_fingerprint")
    if saved_data and data_fingerprint and saved_data != data_fingerprint:
        message = (f"{where}: the prepared data changed under this run (fingerprint "
                   f"{saved_data[:12]} in the checkpoint, {data_fingerprint[:12]} now)")
        if not allow_data_change:
            raise IncompatibleCheckpoint(message + "; pass --config.train.allow_data_change=True "
                                         "to resume on the new data anyway")
        logging.warning("%s; resuming anyway (train.allow_data_change)", message)


def run_directory(source: str) -> epath.Path:
    """The checkpoints directory `train.init_from` names: a run directory (W/pretrain), its
    checkpoints directory, or a project workdir (its instruction-tuned run W/sft when that has
    checkpoints, else W/pretrain)."""
    path = epath.Path(source)
    if not path.exists():
        raise FileNotFoundError(f"train.init_from={source!r}: no such directory")
    for candidate, _ in paths.checkpoint_dirs(path):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"train.init_from={source!r}: no checkpoints there (give a run "
                            "directory such as W/pretrain or W/sft, or a project workdir W)")


def restore_params(source: str, abstract_params=None, vocab_fingerprint: str = ""):
    """Params only from the latest checkpoint of another run (`run_directory(source)`).

    Used by SFT to start from pretraining, and to fine-tune a trained model (or an imported
    Hugging Face export) on new data: the optimizer state and step are not taken. Refused with
    IncompatibleCheckpoint when the source was trained on another vocabulary (both checkpoints
    record its fingerprint) or a parameter's shape differs (named). A checkpoint saved on other
    devices (another machine, another device count) is read onto this process's first device and
    then placed by `abstract_params`' shardings.
    """
    path = run_directory(source)
    manager = ocp.CheckpointManager(path, item_names=ITEMS)
    step = manager.latest_step()
    if step is None:
        raise FileNotFoundError(f"train.init_from={source!r}: no checkpoint in {path}")
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    theirs = (meta or {}).get("vocab_fingerprint", "")
    if vocab_fingerprint and theirs and theirs != vocab_fingerprint:
        manager.close()
        raise IncompatibleCheckpoint(
            f"train.init_from={source!r}: that model was trained on another vocabulary "
            f"(fingerprint {theirs[:12]}, this run's data {vocab_fingerprint[:12]}); prepare the "
            "new data with its tokenizers: --config.prepare.vocab_dir=<its workdir>/tokenizers/"
            "vocab (or <import workdir>/vocab)")
    elsewhere = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(fallback_sharding=elsewhere)))
    manager.close()
    params = restored["state"]["params"]
    if abstract_params is not None:
        expected = jax.tree.structure(abstract_params)
        if jax.tree.structure(params) != expected:
            raise IncompatibleCheckpoint(f"train.init_from={source!r}: its params do not match "
                                         "this model's (different architecture or preset)")
        for (where, value), spec in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                                        jax.tree.leaves(abstract_params)):
            if tuple(value.shape) != tuple(spec.shape):
                raise IncompatibleCheckpoint(
                    f"train.init_from={source!r}: parameter {jax.tree_util.keystr(where)} is "
                    f"{tuple(value.shape)} there and {tuple(spec.shape)} in this model (its "
                    f"model section: {meta.get('model') if meta else 'unknown'}); set this run's "
                    "config.model to the source's")
        params = jax.tree.map(lambda value, spec: jax.device_put(value.astype(spec.dtype),
                                                                 getattr(spec, "sharding", None)),
                              params, abstract_params)
    logging.info("initialised params from %s step %d", path, step)
    return params, step
