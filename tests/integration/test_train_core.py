"""The shared training core: schedule, accumulation, resume, SIGTERM, fallback, guards."""

import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cm3leon_jax import results
from cm3leon_jax.config import TrainConfig
from cm3leon_jax.train import checkpoint, loop, optimizer, step as step_lib

import toy_task
import locations

TESTS = locations.TESTS


def _cfg(**overrides):
    fields = dict(steps=8, batch_size=8, warmup_steps=2, log_every=1, checkpoint_every=4,
                  async_checkpoints=False, lr=1e-2)
    fields.update(overrides)
    return TrainConfig(**fields)


def test_schedule_values():
    train = _cfg(steps=110, warmup_steps=10, lr=1.0, end_lr_fraction=0.1, decay="cosine")
    lr = optimizer.learning_rate(train)
    assert float(lr(0)) == 0.0
    assert float(lr(5)) == pytest.approx(0.5)
    assert float(lr(10)) == pytest.approx(1.0)
    assert float(lr(60)) == pytest.approx(0.55, abs=1e-6)  # half-way through cosine: (1+0.1)/2
    assert float(lr(110)) == pytest.approx(0.1)
    linear = optimizer.learning_rate(_cfg(steps=110, warmup_steps=10, lr=1.0, decay="linear",
                                          end_lr_fraction=0.0))
    assert float(linear(60)) == pytest.approx(0.5)


def test_weight_decay_mask_skips_embeddings_and_vectors():
    params = {"embed": jnp.ones((4, 2)), "layer": {"kernel": jnp.ones((2, 2)),
                                                   "norm": {"scale": jnp.ones(2)}}}
    mask = optimizer.weight_decay_mask(params, _cfg())
    assert mask == {"embed": False, "layer": {"kernel": True, "norm": {"scale": False}}}
    mask = optimizer.weight_decay_mask(params, _cfg(decay_embeddings=True))
    assert mask["embed"]


def test_accumulation_equals_one_big_batch():
    params = toy_task.init_params(jax.random.key(0))
    batch = jax.device_get(next(toy_task.CountingData(toy_task.mesh())))
    batch["weights"] = np.random.default_rng(0).random(batch["weights"].shape).astype(np.float32)
    rng = jax.random.key(1)
    one, sums_one = step_lib.accumulate_gradients(toy_task.loss_fn, params, batch, rng, 1)
    four, sums_four = step_lib.accumulate_gradients(toy_task.loss_fn, params, batch, rng, 4)
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(four)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sums_one["loss"], sums_four["loss"], rtol=1e-6)


def test_summarize_reports_each_modality():
    metrics = step_lib.summarize({"loss": 6.0, "tokens": 3.0, "text_loss": 2.0,
                                  "text_tokens": 2.0, "image_loss": 4.0, "image_tokens": 1.0})
    assert float(metrics["loss"]) == 2.0
    assert float(metrics["text/loss"]) == 1.0 and float(metrics["image/loss"]) == 4.0
    assert float(metrics["image/perplexity"]) == pytest.approx(np.exp(4.0))


def test_training_lowers_loss_and_writes_metrics(tmp_path):
    mesh = toy_task.mesh()
    out = loop.train(_cfg(steps=30, eval_every=10, lr=0.1), str(tmp_path), toy_task.make_task(mesh))
    log = loop.read_train_log(str(tmp_path))
    assert log[30]["loss"] < log[1]["loss"] - 0.3
    figures = results.read_metrics(str(tmp_path))["toy"]
    assert figures["steps"] == 30 and figures["eval"]["validation"]["loss"] > 0
    assert "even/loss" in log[30] and log[30]["tokens_per_s"] > 0 and 0 < log[30]["mfu"] < 1
    # Batch and params live on the 8-device mesh as the shardings say.
    assert len(out["state"].params["embed"].sharding.device_set) == jax.device_count()


def test_resume_after_crash_reproduces_the_loss_curve(tmp_path):
    mesh = toy_task.mesh()
    loop.train(_cfg(), str(tmp_path / "straight"), toy_task.make_task(mesh))
    crashed = toy_task.make_task(mesh, toy_task.CountingData(mesh, crash_at=6))
    with pytest.raises(SystemExit):
        loop.train(_cfg(), str(tmp_path / "resumed"), crashed)  # dies after the step-4 checkpoint
    out = loop.train(_cfg(), str(tmp_path / "resumed"), toy_task.make_task(mesh))
    assert out["steps_this_run"] == 4
    straight = loop.read_train_log(str(tmp_path / "straight"))
    resumed = loop.read_train_log(str(tmp_path / "resumed"))
    assert [straight[s]["loss"] for s in range(1, 9)] == [resumed[s]["loss"] for s in range(1, 9)]


def test_corrupt_latest_checkpoint_falls_back(tmp_path, capsys):
    mesh = toy_task.mesh()
    loop.train(_cfg(checkpoint_every=2, steps=6), str(tmp_path), toy_task.make_task(mesh))
    latest = tmp_path / "checkpoints" / "6" / "state"
    for file in latest.rglob("*"):
        if file.is_file():
            file.write_bytes(b"garbage")
    out = loop.train(_cfg(checkpoint_every=2, steps=8), str(tmp_path), toy_task.make_task(mesh))
    assert "unreadable" in capsys.readouterr().out
    assert out["steps_this_run"] == 4  # resumed from step 4, not 6


def test_incompatible_checkpoint_is_refused(tmp_path):
    mesh = toy_task.mesh()
    loop.train(_cfg(steps=4), str(tmp_path), toy_task.make_task(mesh))
    with pytest.raises(checkpoint.IncompatibleCheckpoint, match="dim: checkpoint 16 vs config 24"):
        loop.train(_cfg(steps=6), str(tmp_path), toy_task.make_task(mesh, width=24))
    toy_task.DIM = 16
    changed = toy_task.make_task(mesh)
    changed.data_fingerprint = "other-data"
    with pytest.raises(checkpoint.IncompatibleCheckpoint, match="prepared data changed"):
        loop.train(_cfg(steps=6), str(tmp_path), changed)
    out = loop.train(_cfg(steps=6, allow_data_change=True), str(tmp_path), changed)
    assert out["steps"] == 6


def test_nonfinite_stops_naming_the_step_or_skips(tmp_path):
    mesh = toy_task.mesh()
    with pytest.raises(FloatingPointError, match="at step 4"):
        loop.train(_cfg(), str(tmp_path / "stop"),
                   toy_task.make_task(mesh, toy_task.CountingData(mesh, nan_at=3)))
    out = loop.train(_cfg(on_nonfinite="skip"), str(tmp_path / "skip"),
                     toy_task.make_task(mesh, toy_task.CountingData(mesh, nan_at=3)))
    assert out["skipped_updates"] == 1 and np.isfinite(out["train_loss"])


def test_sigterm_saves_then_exits(tmp_path):
    env = dict(os.environ, PYTHONPATH=f"{TESTS}{os.pathsep}{TESTS.parent}")
    process = subprocess.Popen([sys.executable, str(TESTS / "toy_task.py"), str(tmp_path), "10000",
                                "0.05"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (tmp_path / "train_log.jsonl").exists():
        time.sleep(0.2)
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output[-3000:]
    assert "stop requested: saved step" in output
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert steps and steps[-1] > 0
    assert results.read_metrics(str(tmp_path))["toy"]["stopped_early"] is True


def test_params_saved_on_eight_devices_start_a_run_on_one(tmp_path):
    """`restore_params` (SFT's start from pretraining, fine-tuning from another machine) reads a
    checkpoint whose devices do not exist here: saved sharded over 8 devices, read with 1."""
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]), ("data",))
    sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    params = {"w": jax.device_put(jnp.arange(16.0).reshape(8, 2), sharded)}
    saver = checkpoint.Checkpoints(str(tmp_path / "run" / "checkpoints"), _cfg())
    saver.save(3, {"params": params, "opt_state": {"mu": params["w"] * 0}}, {}, {})
    saver.close()
    script = ("import jax, jax.numpy as jnp\n"
              "from cm3leon_jax.train import checkpoint\n"
              "abstract = {'w': jax.ShapeDtypeStruct((8, 2), jnp.float32)}\n"
              f"params, step = checkpoint.restore_params({str(tmp_path / 'run')!r}, abstract)\n"
              "print(jax.device_count(), step, float(params['w'].sum()))\n")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-3:] == ["1", "3", "120.0"]
