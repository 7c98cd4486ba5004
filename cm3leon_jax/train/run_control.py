"""What every trainer (decoder loop, VQ-GAN, retrieval bi-encoder) does around its step.

* `CheckpointStore`: an Orbax manager; saves are forced (the trainer decides when). Resume reads
  the newest readable step; a newer unreadable one (e.g. cut off mid-write) is set aside with a
  warning, and when none is readable the run stops with a message instead of starting afresh.
* `StopRequested`: SIGTERM (Cloud TPU preemption, `kill`) becomes a flag polled once per step and
  agreed by every host, so all save the same step, then stop cleanly; a rerun resumes there.
* `NonFiniteError`: a NaN / inf loss or gradient norm, naming the step and the quantity. It is an
  `InputError`, so entry points (`cli.run`) print it as one line and exit 2.
* `RunControl`: the three together for a trainer with its own loop (VQ-GAN, bi-encoder); leaving
  it on SIGTERM raises `TrainingStopped`, a `SystemExit(0)`, so nothing after the loop
  (evaluation, export, the demo's next stage) runs on a half-trained model.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from typing import Any, Mapping, Optional, Sequence

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from cm3leon_jax import console
from cm3leon_jax.config import InputError


# ============================================================================== checkpoints ==


class CheckpointStore:
    """Orbax checkpoints in `directory`: the last `keep`, plus the best by `best_metric` if given
    (lower is better; pass it to `save` as metrics). `item_names` as Orbax's: None for a trainer
    that saves one unnamed item or a Composite."""

    def __init__(self, directory, keep: int, *, best_metric: Optional[str] = None,
                 item_names: Optional[Sequence[str]] = None, async_save: bool = True):
        self.directory = epath.Path(directory)
        policies = [ocp.checkpoint_managers.LatestN(n=keep)]
        if best_metric:
            policies.append(ocp.checkpoint_managers.BestN(
                get_metric_fn=lambda metrics: -float(metrics[best_metric]), n=1,
                keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            create=True, enable_async_checkpointing=async_save,
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies))
        self.manager = ocp.CheckpointManager(self.directory, item_names=item_names,
                                             options=options)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, args, metrics: Optional[dict] = None) -> None:
        self.manager.save(step, args=args, metrics=metrics, force=True)

    def restore(self, step: int, args):
        return self.manager.restore(step, args=args)

    def restore_latest(self, args) -> Optional[tuple[Any, int]]:
        """(what Orbax restores with `args`, step) of the newest readable checkpoint; None if none.

        Newer unreadable checkpoints are moved aside (kept for inspection) so the resumed run can
        save those step numbers again. If none is readable, InputError: likely another model's
        checkpoints, which must not be discarded silently.
        """
        steps = self.steps()
        failures = []
        for step in reversed(steps):
            try:
                restored = self.manager.restore(step, args=args)
            except InputError:
                raise
            except Exception as error:  # noqa: BLE001 - any unreadable checkpoint falls back
                reason = " ".join(f"{type(error).__name__}: {error}".split())[:300]
                logging.warning("checkpoint at step %d in %s is unreadable (%s); falling back "
                                "to the previous one", step, self.directory, reason)
                console.say(f"warning: checkpoint step {step} unreadable, trying an earlier one")
                failures.append((step, reason))
                continue
            if failures:
                for bad, _ in failures:
                    self._set_aside(bad)
                self.manager.reload()
            return restored, step
        if steps:
            raise InputError(
                f"{self.directory}: none of the checkpoints {steps} is readable (step "
                f"{failures[0][0]}: {failures[0][1]}); if they belong to another model or config, "
                "use another --workdir, or move them away to start afresh")
        return None

    def _set_aside(self, step: int) -> None:
        if jax.process_index() == 0:
            target = self.directory.parent / "unreadable_checkpoints" / f"{step}-{time.time():.0f}"
            target.parent.mkdir(parents=True, exist_ok=True)
            (self.directory / str(step)).rename(target)
            logging.warning("moved unreadable checkpoint %d to %s", step, target)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


# ================================================================================= SIGTERM ==


class StopRequested:
    """True once SIGTERM arrived; the trainer polls it each step, saves, then stops."""

    def __init__(self, signals=(signal.SIGTERM,)):
        self._event = threading.Event()
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in signals:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        del frame
        logging.warning("received signal %d: will save a checkpoint and stop after this step",
                        signum)
        self._event.set()

    def __bool__(self) -> bool:
        return self._event.is_set()

    def agreed(self) -> bool:
        """True on every host when any host was asked to stop (hosts see SIGTERM at different
        steps; a tiny all-gather per step makes them stop, and save, at the same one)."""
        if jax.process_count() == 1:
            return bool(self)
        flags = multihost_utils.process_allgather(np.asarray(bool(self)))
        return bool(np.any(flags))

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def stopped_message(name: str, step: int) -> str:
    return (f"[{name}] stop requested: saved step {step}, exiting; rerun the same command to "
            f"resume from step {step}")


class TrainingStopped(SystemExit):
    """Raised once the SIGTERM step is saved: exit status 0, and whatever called the trainer
    stops too instead of going on with a half-trained model."""

    def __init__(self, name: str, step: int):
        super().__init__(0)
        self.step = step
        self.message = stopped_message(name, step)

    def __str__(self) -> str:
        return self.message


# ============================================================================== non-finite ==


class NonFiniteError(InputError, FloatingPointError):
    """A NaN / inf loss or gradient norm; the message names the step and the quantity."""


def nonfinite_message(step: int, values: Mapping[str, Any]) -> Optional[str]:
    """'non-finite loss at step 37 (loss/total=nan, grad_norm=nan)' if any value is NaN / inf."""
    bad = {name: float(value) for name, value in values.items()
           if not math.isfinite(float(value))}
    if not bad:
        return None
    what = "loss" if any("loss" in name for name in bad) else "gradients"
    return (f"non-finite {what} at step {step} ("
            + ", ".join(f"{name}={value}" for name, value in bad.items()) + ")")


# ============================================================================= run control ==


class RunControl:
    """Checkpoints, SIGTERM and the non-finite check for a trainer with its own loop.

        with RunControl("vqgan", paths.checkpoints_of(workdir), keep=2, watch=("loss/total",),
                        advice="lower config.vqgan_train.learning_rate") as run:
            found = run.restore_latest(ocp.args.StandardRestore(state))
            for step in ...:
                state, metrics = step_fn(state, batch)
                run.record(step, metrics)
                stopping = run.stop_requested()
                if step % log_every == 0 or stopping: write(run.take())  # [(step, metrics)]
                if step % checkpoint_every == 0 or stopping: run.save(step, args)
                if stopping: run.stop(step)

    Metrics are fetched one step late (the device runs the next step meanwhile), and every
    recorded step is checked before a save, so a non-finite state is never saved.
    """

    def __init__(self, name: str, directory, keep: int, watch: Sequence[str], advice: str,
                 item_names: Optional[Sequence[str]] = None):
        self.name, self.watch, self.advice = name, tuple(watch), advice
        self.store = CheckpointStore(directory, keep, item_names=item_names)
        self._stop = StopRequested()
        self._queued: list[tuple[int, Any]] = []
        self._checked: list[tuple[int, dict]] = []

    def __enter__(self) -> "RunControl":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        try:
            self.store.close()
        finally:
            self._stop.restore()
        if isinstance(error, TrainingStopped):
            logging.warning("%s", error.message)
            console.say(error.message)

    def restore_latest(self, args) -> Optional[tuple[Any, int]]:
        """(restored, step) of the newest readable checkpoint (`CheckpointStore`), or None."""
        found = self.store.restore_latest(args)
        if found is not None:
            logging.info("resumed %s from step %d in %s", self.name, found[1],
                         self.store.directory)
            console.say(f"[{self.name}] resumed from step {found[1]}")
        return found

    def record(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Queues this step's metrics; fetches and checks the previous step's."""
        self._check_queued()
        self._queued.append((step, metrics))

    def take(self) -> list[tuple[int, dict]]:
        """(step, host metrics as numpy scalars) of each step recorded since the last take, all
        checked."""
        self._check_queued()
        taken, self._checked = self._checked, []
        return taken

    def _check_queued(self) -> None:
        for step, metrics in self._queued:
            values = jax.device_get(dict(metrics))
            message = nonfinite_message(step, {name: values[name] for name in self.watch
                                               if name in values})
            if message:
                steps = self.store.steps()
                where = (f"the last checkpoint is step {steps[-1]}, where a rerun resumes"
                         if steps else "no checkpoint was saved yet")
                raise NonFiniteError(f"{message}; {where}; {self.advice}")
            self._checked.append((step, values))
        self._queued = []

    def stop_requested(self) -> bool:
        return self._stop.agreed()

    def save(self, step: int, args) -> None:
        """Checks every recorded step, then saves `step` (forced)."""
        self._check_queued()
        self.store.save(step, args)

    def stop(self, step: int) -> None:
        """After the stop step was saved: raises TrainingStopped (exit status 0)."""
        raise TrainingStopped(self.name, step)
