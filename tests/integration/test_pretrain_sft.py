"""Pretraining and SFT entry points on the tiny stack: they train, resume exactly after kill -9,
start SFT from pretraining, and refuse incompatible workdirs."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import ml_collections
import pytest

from cm3leon_jax import config, pretrain, results, sft
from cm3leon_jax.data import prepare
from cm3leon_jax.train import checkpoint, loop

import tiny_stack
import locations

REPO = locations.ROOT


def _cfg(vocab_dir, steps=6, **train):
    spec = __import__("importlib.util").util.spec_from_file_location(
        "sft_tiny", REPO / "experiments" / "sft_tiny.py")
    module = __import__("importlib.util").util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config()
    cfg.data.update(dict(num_train=48, num_validation=8, num_test=8))
    cfg.prepare.update(dict(num_shards=2, encode_batch_size=16, retrieval="off",
                            vocab_dir=str(vocab_dir), splits=("train", "validation")))
    cfg.cm3.seq_len = 128
    cfg.model.update(dict(vocab_size=512, num_layers=2, d_model=32, num_heads=2, max_seq_len=128))
    cfg.train.update(dict(steps=steps, batch_size=8, warmup_steps=1, log_every=1, eval_every=0,
                          eval_batches=1, checkpoint_every=3, async_checkpoints=False))
    cfg.train.update(train)
    return cfg


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    vocab_dir = root / "vocab"
    tiny_stack.write_vocab(vocab_dir)
    prepare.prepare(_cfg(vocab_dir), str(root))
    return root


def _copy_prepared(source, target):
    import shutil
    shutil.copytree(source / "prepared", target / "prepared")
    shutil.copytree(source / "vocab", target / "vocab")
    return target


def test_pretrain_then_sft(workdir):
    cfg = _cfg(workdir / "vocab")
    pretrain.run(cfg, str(workdir))
    figures = results.read_metrics(str(workdir))["pretrain"]
    assert figures["steps"] == 6 and figures["train_loss"] > 0
    assert {"validation", "validation_no_retrieval"} <= set(figures["eval"])
    assert figures["eval"]["validation"]["image/tokens"] > 0
    log = loop.read_train_log(str(workdir / "pretrain"))
    assert log[6]["loss"] < log[1]["loss"]
    sft_cfg = _cfg(workdir / "vocab", steps=4)
    sft.run(sft_cfg, str(workdir))
    sft_figures = results.read_metrics(str(workdir))["sft"]
    assert sft_figures["steps"] == 4
    assert {"captioning", "vqa", "text_to_image"} <= set(sft_figures["eval"])


def test_sft_needs_a_pretraining_checkpoint(workdir, tmp_path):
    other = _copy_prepared(workdir, tmp_path / "fresh")
    with pytest.raises(FileNotFoundError, match="no pretraining checkpoint"):
        sft.run(_cfg(other / "vocab"), str(other))


def test_vocab_too_large_for_model_is_a_config_error(workdir, tmp_path):
    other = _copy_prepared(workdir, tmp_path / "small")
    cfg = _cfg(other / "vocab")
    cfg.model.vocab_size = 128
    with pytest.raises(config.ConfigError, match="config.model.vocab_size=128: is smaller"):
        pretrain.run(cfg, str(other))


def test_incompatible_model_in_workdir_is_refused(workdir, tmp_path):
    other = _copy_prepared(workdir, tmp_path / "incompatible")
    pretrain.run(_cfg(other / "vocab", steps=3), str(other))
    cfg = _cfg(other / "vocab", steps=6)
    cfg.model.d_model = 64
    with pytest.raises(checkpoint.IncompatibleCheckpoint, match="d_model: checkpoint 32 vs config 64"):
        pretrain.run(cfg, str(other))


def _run_pretrain_process(workdir, steps):
    overrides = ["--config.data.num_train=48", "--config.data.num_validation=8",
                 "--config.data.num_test=8", "--config.cm3.seq_len=128",
                 "--config.model.vocab_size=512", "--config.model.num_layers=2",
                 "--config.model.d_model=32", "--config.model.num_heads=2",
                 "--config.model.max_seq_len=128", f"--config.train.steps={steps}",
                 "--config.train.warmup_steps=1", "--config.train.log_every=1",
                 "--config.train.eval_every=0", "--config.train.checkpoint_every=3"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "cm3leon_jax.pretrain", "--config",
                             str(REPO / "experiments" / "pretrain_tiny.py"), "--workdir",
                             str(workdir), *overrides], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_kill_9_then_resume_reproduces_the_loss_curve(workdir, tmp_path):
    steps = 30
    straight = _copy_prepared(workdir, tmp_path / "straight")
    process = _run_pretrain_process(straight, steps)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-3000:]
    killed = _copy_prepared(workdir, tmp_path / "killed")
    process = _run_pretrain_process(killed, steps)
    deadline = time.time() + 600
    while time.time() < deadline:
        log = loop.read_train_log(str(killed / "pretrain"))
        if max(log, default=0) >= 8:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert max(loop.read_train_log(str(killed / "pretrain"))) < steps, "finished before the kill"
    process = _run_pretrain_process(killed, steps)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-3000:]
    assert "resumed from step" in output
    a = loop.read_train_log(str(straight / "pretrain"))
    b = loop.read_train_log(str(killed / "pretrain"))
    assert [a[s]["loss"] for s in range(1, steps + 1)] == [b[s]["loss"] for s in range(1, steps + 1)]


def _summary_tags(directory):
    import tensorflow as tf
    tags = {}
    for path in pathlib.Path(directory).glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                tags[value.tag] = value
    return tags


def test_eval_writes_text_to_image_samples(workdir, tmp_path):
    other = _copy_prepared(workdir, tmp_path / "samples")
    cfg = _cfg(other / "vocab", steps=1)
    cfg.samples = ml_collections.ConfigDict(dict(num_captions=2, num_samples=2, scale=1))
    pretrain.run(cfg, str(other))
    tags = _summary_tags(other / "pretrain" / "tensorboard")
    assert "samples/text_to_image" in tags and "samples/captions" in tags
    assert tags["samples/text_to_image"].metadata.plugin_data.plugin_name == "images"
    # One row per caption (real image, then 2 samples) of 32x32 images with 2-pixel gaps.
    import tensorflow as tf
    image = tf.io.decode_image(tf.make_ndarray(tags["samples/text_to_image"].tensor)[2]).numpy()
    assert image.shape == (2 * 34 + 2, 3 * 34 + 2, 3)
    # shapes captions: the verifier judges the samples, and every eval is in eval_log.jsonl.
    from cm3leon_jax.train import loop
    evals = loop.read_train_log(str(other / "pretrain"), loop.EVAL_LOG)
    assert list(evals) == [1]
    assert evals[1]["tokens"] == cfg.train.batch_size * cfg.cm3.seq_len
    assert 0.0 <= evals[1]["samples/attribute_accuracy"] <= 1.0
    assert evals[1]["validation/loss"] > 0 and evals[1]["validation_no_retrieval/loss"] > 0
