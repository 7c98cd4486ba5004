"""The one training loop, shared by pretraining, instruction tuning and super-resolution.

A stage describes itself as a `Task` (model init, loss, shardings, data, eval sets); `train` does
the rest: state creation on the mesh, resume / init-from, the jitted step with explicit shardings
and donated state, CLU metrics + ReportProgress (steps/s, ETA), tokens/s and MFU, periodic eval,
Orbax checkpoints (async, last K + best), SIGTERM save-and-stop, non-finite handling, and the final
figures in `<workdir>/metrics.json`. Every logged step is also appended to
`<workdir>/train_log.jsonl` and every eval to `<workdir>/eval_log.jsonl` (one JSON object per line;
after a resume the newest line per step wins): the learning curves without TensorBoard.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from typing import Any, Callable, Iterator, Optional, Protocol

from absl import logging
from clu import metric_writers, periodic_actions
from etils import epath
import jax
import jax.numpy as jnp
import numpy as np

from cm3leon_jax import console, paths, results
from cm3leon_jax.config import TrainConfig
from cm3leon_jax.train import checkpoint, optimizer, run_control, state as state_lib
from cm3leon_jax.train import step as step_lib, throughput


class DataIterator(Protocol):
    """Yields global batches (dicts of jax.Arrays); its position can be saved and restored."""

    def __next__(self) -> dict: ...

    def get_state(self) -> dict: ...

    def set_state(self, state: dict) -> None: ...


@dataclasses.dataclass
class Task:
    name: str  # stage name: metrics.json key and log prefix
    init_params: Callable[[jax.Array], Any]  # rng -> params pytree
    param_shardings: Callable[[Any], Any]  # abstract params -> pytree of jax.sharding.Sharding
    batch_sharding: jax.sharding.Sharding
    loss_fn: step_lib.LossFn
    train_data: DataIterator
    eval_data: dict[str, Callable[[], Iterator[dict]]] = dataclasses.field(default_factory=dict)
    tokens_per_batch: int = 0  # rows * seq_len, for tokens/s and MFU
    flops_per_token: float = 0.0  # training FLOPs per token (6N + attention), for MFU
    model_signature: dict = dataclasses.field(default_factory=dict)
    data_fingerprint: str = ""
    vocab_fingerprint: str = ""  # of the data's vocabulary: init_from refuses a model of another
    on_eval: Optional[Callable[[Any, int, Any], dict]] = None  # (params, step, writer) -> figures
    # Entered around the whole run, so tracing sees it (e.g. the mesh + logical axis rules that
    # activation sharding hints resolve against).
    context: Callable[[], Any] = contextlib.nullcontext


def _create_state(task: Task, tx, train: TrainConfig, params=None):
    """(state, its shardings), created shard by shard on the mesh (`state.py`)."""
    rng = jax.random.key(train.seed)
    param_shardings = task.param_shardings(jax.eval_shape(task.init_params, rng))
    return state_lib.create_sharded_train_state(task.init_params, param_shardings, tx,
                                                task.batch_sharding.mesh, rng, params=params)


def _abstract_state(task: Task, tx, train: TrainConfig):
    """(abstract state, its shardings) for restoring, nothing allocated (`state.py`)."""
    rng = jax.random.key(train.seed)
    param_shardings = task.param_shardings(jax.eval_shape(task.init_params, rng))
    return state_lib.abstract_train_state(task.init_params, param_shardings, tx,
                                          task.batch_sharding.mesh, rng)


def evaluate(task: Task, eval_fn, params, batches: int) -> dict[str, dict[str, float]]:
    """Normalised metrics per eval set, over at most `batches` batches each."""
    figures = {}
    for name, make_batches in task.eval_data.items():
        total = None
        for index, batch in enumerate(make_batches()):
            if index >= batches:
                break
            sums = eval_fn(params, batch)
            total = sums if total is None else jax.tree.map(jnp.add, total, sums)
        if total is not None:
            figures[name] = {k: float(v) for k, v in
                             jax.device_get(step_lib.summarize(total)).items()}
    return figures


TRAIN_LOG, EVAL_LOG = "train_log.jsonl", "eval_log.jsonl"


def _log_line(workdir: epath.Path, step: int, scalars: dict, name: str = TRAIN_LOG) -> None:
    if jax.process_index() != 0:
        return
    with (workdir / name).open("a") as file:
        file.write(json.dumps({"step": step, **scalars}, sort_keys=True) + "\n")


def read_train_log(workdir: str, name: str = TRAIN_LOG) -> dict[int, dict]:
    """step -> logged scalars, the newest line per step (what a resumed run re-logged wins).

    name: TRAIN_LOG (training scalars per log step) or EVAL_LOG (the eval figures of each eval,
    flattened as "<eval set>/<figure>", with "tokens": training tokens seen by then)."""
    path = epath.Path(workdir) / name
    entries = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                entry = json.loads(line)
                entries[entry["step"]] = entry
    return entries


def train(train_cfg: TrainConfig, workdir: str, task: Task,
          full_config: Optional[dict] = None, metrics_workdir: Optional[str] = None) -> dict:
    """Runs (or resumes) training to `train_cfg.steps`; returns the final figures. On SIGTERM it
    saves the step, writes the figures (`stopped_early`) and raises `run_control.TrainingStopped`
    (exit status 0), so a caller chaining stages (SFT after pretraining, the demo) stops too.

    workdir: the run directory (checkpoints, tensorboard, train_log.jsonl).
    metrics_workdir: where metrics.json gets this stage's figures (default: workdir); stages of
      one project write into the project's workdir while keeping their own run directories.
    """
    with task.context():
        return _train(train_cfg, workdir, task, full_config, metrics_workdir or workdir)


def _train(train_cfg: TrainConfig, workdir: str, task: Task, full_config: Optional[dict],
           metrics_workdir: str) -> dict:
    workdir_path = epath.Path(workdir)
    workdir_path.mkdir(parents=True, exist_ok=True)
    schedule = optimizer.learning_rate(train_cfg)
    tx = optimizer.make_optimizer(train_cfg)
    stop = run_control.StopRequested()
    checkpoints = checkpoint.Checkpoints(str(paths.checkpoints_of(workdir_path)), train_cfg)
    meta = {"model": task.model_signature, "data_fingerprint": task.data_fingerprint,
            "vocab_fingerprint": task.vocab_fingerprint, "task": task.name,
            "config": full_config or {}}

    latest = checkpoints.steps()[-1] if checkpoints.steps() else None
    if latest is not None:
        checkpoint.check_compatible(checkpoints.read_meta(latest), task.model_signature,
                                    task.data_fingerprint, train_cfg.allow_data_change,
                                    f"--workdir {workdir}")
    # Restores read into an abstract state: no random state is allocated beside the restored one.
    abstract, state_shardings = _abstract_state(task, tx, train_cfg)
    restored = checkpoints.restore_latest(abstract) if latest is not None else None
    if restored is not None:
        state, data_state, _, start = restored
        task.train_data.set_state(data_state)
        logging.info("resumed %s from step %d in %s", task.name, start, workdir)
        console.say(f"[{task.name}] resumed from step {start}")
    elif train_cfg.init_from:
        params, from_step = checkpoint.restore_params(train_cfg.init_from, abstract.params,
                                                      task.vocab_fingerprint)
        state, state_shardings = _create_state(task, tx, train_cfg, params=params)
        console.say(f"[{task.name}] params from {train_cfg.init_from} (step {from_step}); "
                    "fresh optimizer")
    else:
        state, state_shardings = _create_state(task, tx, train_cfg)
    train_step = step_lib.jit_train_step(task.loss_fn, tx, schedule, state_shardings,
                                         task.batch_sharding, train_cfg.micro_batches)
    eval_fn = jax.jit(step_lib.make_eval_step(task.loss_fn))

    writer = metric_writers.create_default_writer(
        str(paths.tensorboard_of(workdir_path)), just_logging=jax.process_index() > 0)
    report = periodic_actions.ReportProgress(num_train_steps=train_cfg.steps, writer=writer,
                                             every_steps=train_cfg.log_every)
    devices = jax.device_count()
    peak = throughput.peak_flops_per_device(train_cfg.peak_flops_per_device)

    first_step = int(jax.device_get(state.step))
    window: list[dict] = []
    window_start = time.perf_counter()
    pending: Optional[tuple[int, dict]] = None
    last_eval: dict = {}
    best_eval = float("inf")
    start_time = time.perf_counter()
    steps_done = 0

    def check(step_number: int, metrics: dict) -> dict:
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if values["finite"] < 1.0:
            where = (run_control.nonfinite_message(
                step_number, {"loss": values["loss"], "grad_norm": values["grad_norm"]})
                or f"non-finite loss or gradients at step {step_number}") \
                + "; the update was not applied"
            if train_cfg.on_nonfinite == "stop":
                raise run_control.NonFiniteError(
                    where + f". Last checkpoints: {checkpoints.steps()}. Lower train.lr or set "
                    "train.on_nonfinite=skip")
            logging.warning("%s; skipping it (train.on_nonfinite=skip)", where)
        return values

    def flush(step_number: int) -> None:
        nonlocal window, window_start
        if not window:
            return
        elapsed = max(time.perf_counter() - window_start, 1e-9)
        scalars = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
        tokens_per_s = task.tokens_per_batch * len(window) / elapsed
        scalars["tokens_per_s"] = tokens_per_s
        if task.flops_per_token:
            scalars["mfu"] = task.flops_per_token * tokens_per_s / (peak * devices)
        writer.write_scalars(step_number, {f"train/{k}": v for k, v in scalars.items()})
        _log_line(workdir_path, step_number, scalars)
        console.say(f"[{task.name}] step {step_number}/{train_cfg.steps} "
                    f"loss {scalars['loss']:.4f} lr {scalars['learning_rate']:.2e} "
                    f"{tokens_per_s:,.0f} tok/s"
                    + (f" MFU {scalars['mfu']:.1%}" if "mfu" in scalars else ""))
        window, window_start = [], time.perf_counter()

    def run_eval(step_number: int) -> dict:
        nonlocal best_eval
        figures = evaluate(task, eval_fn, state.params, train_cfg.eval_batches)
        writer.write_scalars(step_number, {f"eval/{name}/{k}": v for name, f in figures.items()
                                           for k, v in f.items()})
        if task.on_eval is not None:
            extra = task.on_eval(state.params, step_number, writer) or {}
            writer.write_scalars(step_number, {f"eval/{name}/{k}": v for name, f in extra.items()
                                               for k, v in f.items()})
            figures.update(extra)
        flat = {f"{name}/{k}": float(v) for name, f in figures.items() for k, v in f.items()}
        _log_line(workdir_path, step_number,
                  {"tokens": step_number * task.tokens_per_batch, **flat}, EVAL_LOG)
        if figures:
            summary = ", ".join(f"{n} loss {f['loss']:.4f}" for n, f in figures.items()
                                if isinstance(f, dict) and "loss" in f)
            console.say(f"[{task.name}] eval at step {step_number}: {summary}")
        return figures

    def main_eval_loss(figures: dict) -> Optional[float]:
        for name, f in figures.items():
            if isinstance(f, dict) and "loss" in f:
                return f["loss"]
        return None

    stopped_early = False
    try:
        for step_number in range(first_step + 1, train_cfg.steps + 1):
            batch = next(task.train_data)
            state, metrics = train_step(state, batch)
            steps_done += 1
            # Check the previous step's metrics while this one runs (one step of lag keeps the
            # device busy instead of waiting for every scalar).
            if pending is not None:
                window.append(check(*pending))
            pending = (step_number, metrics)
            report(step_number)
            is_last = step_number == train_cfg.steps
            # Every host must agree to stop at the same step, or they would save different steps.
            stopped_early = stop.agreed()
            if step_number % train_cfg.log_every == 0 or is_last or stopped_early:
                window.append(check(*pending))
                pending = None
                flush(step_number)
            eval_loss = None
            if (train_cfg.eval_every and step_number % train_cfg.eval_every == 0) or is_last:
                last_eval = run_eval(step_number)
                eval_loss = main_eval_loss(last_eval)
                if eval_loss is not None:
                    best_eval = min(best_eval, eval_loss)
            if step_number % train_cfg.checkpoint_every == 0 or is_last or stopped_early:
                if pending is not None:
                    window.append(check(*pending))
                    pending = None
                checkpoints.save(step_number, state, task.train_data.get_state(), meta,
                                 eval_loss=eval_loss)
            if stopped_early:
                console.say(run_control.stopped_message(task.name, step_number))
                break
        if pending is not None:
            window.append(check(*pending))
            flush(pending[0])
    finally:
        checkpoints.close()
        writer.flush()
        stop.restore()

    final_step = int(jax.device_get(state.step))
    wall = time.perf_counter() - start_time
    log = read_train_log(workdir)
    last = log[max(log)] if log else {}
    figures = {
        "steps": final_step, "steps_this_run": steps_done, "wall_seconds": wall,
        "stopped_early": stopped_early, "skipped_updates": int(jax.device_get(state.skipped)),
        "train_loss": last.get("loss"), "tokens_per_s": last.get("tokens_per_s"),
        "mfu": last.get("mfu"), "eval": last_eval,
        "best_eval_loss": None if best_eval == float("inf") else best_eval,
    }
    path = results.write_metrics(metrics_workdir, task.name, figures)
    console.say(f"[{task.name}] done: {steps_done} steps this run (now at {final_step}) in "
                f"{wall:.0f} s; train loss {figures['train_loss']}; figures in {path}")
    if stopped_early:  # SIGTERM: the step is saved and the figures written; nothing else runs
        raise run_control.TrainingStopped(task.name, final_step)
    return {"state": state, **figures}
