"""The run control the VQ-GAN and retrieval bi-encoder trainers share with the decoder loop
(`train/run_control.py`): a non-finite step stops the run by name; kill -9 and SIGTERM resume.

Signals go to real processes (`python -m ...` on the tiniest configs); the rest runs in this
process where it can. A NaN is injected by wrapping the compiled step, which is left unchanged:
every run of one trainer has the same step count (ENDLESS, the schedule is compiled in), so its
step compiles once per session and later processes load it from the compilation cache.
"""

import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import ml_collections
import optax
import pytest

from cm3leon_jax import config as config_lib, experiment_files
from cm3leon_jax.config import InputError, RetrievalConfig, VQGANTrainConfig
from cm3leon_jax.data.sources import catalog
from cm3leon_jax.retrieval import train_encoder
from cm3leon_jax.tokenizers import train_vqgan
from cm3leon_jax.train import run_control

import locations

REPO = locations.ROOT
EXPERIMENTS = REPO / "experiments"

# One small `shapes` set (level 1, as vqgan_tiny.py) for both trainers, built once.
DATA = {"data.num_train": 64, "data.num_validation": 16, "data.num_test": 16,
        "data.max_objects": 1, "data.textured_fraction": 0.0}
VQGAN = {"vqgan.channels": 8, "vqgan.channel_multipliers": (1, 2, 2), "vqgan.norm_groups": 4,
         "vqgan.codebook_size": 64, "vqgan_train.warmup_steps": 1, "vqgan_train.log_every": 1,
         "vqgan_train.checkpoint_every": 2, "vqgan_train.image_every": 100_000,
         "vqgan_train.shuffle_buffer": 64, "vqgan_train.eval_batch_size": 8}
ENCODER = {"retrieval.text_width": 32, "retrieval.text_layers": 1, "retrieval.text_heads": 2,
           "retrieval.vision_width": 32, "retrieval.vision_layers": 1, "retrieval.vision_heads": 2,
           "retrieval.patch_size": 8, "retrieval.projection_dim": 32, "retrieval.batch_size": 16,
           "retrieval.warmup_steps": 1, "retrieval.log_every": 1,
           "retrieval.checkpoint_every": 2, "retrieval.embed_batch_size": 64,
           "retrieval.num_candidates": 8}
# Per trainer: module, config file, overrides, checkpoints folder in the workdir, steps field.
TRAINERS = {
    "vqgan": ("cm3leon_jax.tokenizers.train_vqgan", "vqgan_tiny.py", VQGAN, "checkpoints",
              "vqgan_train.num_steps"),
    "encoder": ("cm3leon_jax.retrieval.train_encoder", "retrieval_shapes.py", ENCODER,
                "retrieval_encoder/checkpoints", "retrieval.train_steps"),
}
ENDLESS = 100_000  # the step count of runs that a signal or a NaN ends


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("shapes")
    cfg = _config("vqgan", directory)
    list(catalog.numpy_examples(config_lib.data_config(cfg), str(directory), "train", limit=1))
    return directory


def _overrides(trainer: str, data_dir, steps: int) -> dict:
    _, _, own, _, steps_field = TRAINERS[trainer]
    return {**DATA, "data.data_dir": str(data_dir), **own, steps_field: steps}


def _config(trainer: str, data_dir, steps: int = ENDLESS) -> ml_collections.ConfigDict:
    """The config the command line gives (the experiment file plus the overrides)."""
    config_file = TRAINERS[trainer][1]
    cfg = experiment_files.config(str(EXPERIMENTS / config_file), config_file[:-3])
    for key, value in _overrides(trainer, data_dir, steps).items():
        section, field = key.split(".")
        cfg[section][field] = value
    return cfg


def _command_line(trainer: str, workdir, data_dir) -> list[str]:
    """The trainer's arguments after `python -m <module>`."""
    return ["--config", str(EXPERIMENTS / TRAINERS[trainer][1]), "--workdir", str(workdir),
            "--verbosity=-1", *(f"--config.{key}={value}".replace(" ", "")
                                for key, value in _overrides(trainer, data_dir, ENDLESS).items())]


def _start(trainer: str, workdir, data_dir, log) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", TRAINERS[trainer][0], *_command_line(trainer, workdir, data_dir)],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=log,
        stderr=subprocess.STDOUT, text=True)


def _saved(trainer: str, workdir) -> list[int]:
    directory = pathlib.Path(workdir) / TRAINERS[trainer][3]
    if not directory.exists():
        return []
    return sorted(int(path.name) for path in directory.iterdir() if path.name.isdigit())


def _wait_for_checkpoint_after(trainer: str, workdir, step: int, process, timeout=180) -> None:
    deadline = time.time() + timeout
    while not any(saved > step for saved in _saved(trainer, workdir)):
        assert process.poll() is None, "the trainer ended before it was signalled"
        assert time.time() < deadline, f"no checkpoint after step {step} in {timeout} s"
        time.sleep(0.05)


def test_each_trainer_keeps_its_learning_rate_schedule():
    """The shared warmup + cosine (`optimizer.warmup_cosine`) gives each trainer exactly the values
    of the optax schedule it had before."""
    steps = jnp.arange(0, 301)
    vqgan = VQGANTrainConfig(num_steps=300, warmup_steps=20, learning_rate=2e-3,
                             final_learning_rate_fraction=0.05)
    before = optax.warmup_cosine_decay_schedule(0.0, 2e-3, 20, 300, end_value=2e-3 * 0.05)
    assert jnp.array_equal(train_vqgan.learning_rate_schedule(vqgan)(steps), before(steps))
    for warmup, train_steps in ((30, 300), (100, 50)):
        encoder = RetrievalConfig(train_steps=train_steps, warmup_steps=warmup,
                                  learning_rate=2e-3)
        before = optax.warmup_cosine_decay_schedule(0.0, 2e-3, min(warmup, train_steps - 1),
                                                    train_steps, end_value=0.0)
        assert jnp.array_equal(train_encoder.learning_rate_schedule(encoder)(steps),
                               before(steps))


def test_nonfinite_vqgan_step_is_named_and_nothing_after_is_saved(data_dir, tmp_path,
                                                                     monkeypatch):
    original = train_vqgan.compile_step

    def poisoned(step_fn, mesh):
        compiled = original(step_fn, mesh)

        def run(state, images):
            state, metrics = compiled(state, images)
            if int(state.step) == 3:
                metrics = {**metrics, "loss/total": jnp.full((), jnp.nan)}
            return state, metrics

        return run

    monkeypatch.setattr(train_vqgan, "compile_step", poisoned)
    with pytest.raises(run_control.NonFiniteError) as raised:
        train_vqgan.train(_config("vqgan", data_dir), str(tmp_path / "run"))
    message = str(raised.value)
    assert message == ("non-finite loss at step 3 (loss/total=nan); the last checkpoint is step 2, "
                       "where a rerun resumes; lower config.vqgan_train.learning_rate")
    assert isinstance(raised.value, InputError)  # so cli.run prints it as one line, exit 2
    assert _saved("vqgan", tmp_path / "run") == [2]


def test_nonfinite_encoder_step_stops_the_command_with_one_line(data_dir, tmp_path):
    """Through the command line: exit status 2, the step and quantity named, no traceback."""
    script = (
        "import sys, jax.numpy as jnp\n"
        "from cm3leon_jax import cli\n"
        "from cm3leon_jax.retrieval import train_encoder\n"
        "original, calls = train_encoder.make_train_step, [0]\n"
        "def poisoned(*args):\n"
        "    compiled = original(*args)\n"
        "    def run(*inputs):\n"
        "        params, opt_state, metrics = compiled(*inputs)\n"
        "        calls[0] += 1\n"
        "        if calls[0] == 3:\n"
        "            metrics = {**metrics, 'loss': jnp.full((), jnp.nan)}\n"
        "        return params, opt_state, metrics\n"
        "    return run\n"
        "train_encoder.make_train_step = poisoned\n"
        f"sys.argv = ['train_encoder', *{_command_line('encoder', tmp_path / 'run', data_dir)!r}]\n"
        "cli.run(train_encoder.main)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr + done.stdout
    assert ("\nerror: non-finite loss at step 3 (loss=nan); the last checkpoint is step 2, where "
            "a rerun resumes; lower config.retrieval.learning_rate\n") in "\n" + done.stderr
    assert _saved("encoder", tmp_path / "run") == [2]


@pytest.mark.parametrize("trainer", ["vqgan", "encoder"])
def test_kill_9_then_sigterm_resume_where_they_left_off(trainer, data_dir, tmp_path, capsys):
    """kill -9: the rerun resumes from the last saved checkpoint and trains on. SIGTERM: the run
    saves the step it is at and exits 0 saying so, and nothing after training (evaluation,
    export) runs; the next run resumes from that step."""
    workdir = tmp_path / "run"
    with open(tmp_path / "killed.log", "w") as log:
        process = _start(trainer, workdir, data_dir, log)
        _wait_for_checkpoint_after(trainer, workdir, 0, process)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    last = _saved(trainer, workdir)[-1]

    with open(tmp_path / "stopped.log", "w") as log:
        process = _start(trainer, workdir, data_dir, log)
        _wait_for_checkpoint_after(trainer, workdir, last, process)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
    output = (tmp_path / "stopped.log").read_text()
    assert process.returncode == 0, output[-3000:]
    assert f"resumed from step {last}\n" in output
    stopped = int(re.search(r"stop requested: saved step (\d+), exiting; rerun the same command "
                            r"to resume from step \1\n", output).group(1))
    assert stopped > last and _saved(trainer, workdir)[-1] == stopped
    assert "Traceback" not in output and not (workdir / "metrics.json").exists()

    # The next run resumes there (asked for exactly that many steps, it has none left to train).
    cfg = _config(trainer, data_dir, steps=stopped)
    if trainer == "vqgan":
        state, _ = train_vqgan.train(cfg, str(workdir))
        assert int(state.step) == stopped
    else:
        train_encoder.train(cfg, str(workdir))
    assert f"resumed from step {stopped}\n" in capsys.readouterr().out
    assert _saved(trainer, workdir)[-1] == stopped
