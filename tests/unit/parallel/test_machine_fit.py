"""Plans on a machine (`plan --machine`): the exported train step lays the state out as the plan's
arithmetic says, the fit search finds the first setting within budget, bad input is one line."""

import functools
import subprocess
import sys

import ml_collections
import pytest

from cm3leon_jax.config import ConfigError, MeshConfig, model_config
from cm3leon_jax.parallel import memory_plan as plan_lib
import locations

TINY = dict(preset="chameleon", vocab_size=256, num_layers=2, d_model=64, num_heads=8,
            num_kv_heads=4, mlp_dim=96, max_seq_len=128, qk_norm=True, tie_embeddings=False,
            dtype="bfloat16", remat="none")
EIGHT = plan_lib.Machine("eight", 8, 1.0, "cpu")


def _cfg(micro_batches=1):
    return ml_collections.ConfigDict(dict(
        model=dict(TINY), mesh=dict(data=1, fsdp=8, tensor=1),
        train=dict(batch_size=64, micro_batches=micro_batches)))


def test_exported_state_bytes_equal_the_plan_and_the_compiled_arguments():
    """Three views of one layout: the exported program's input shardings, the plan's
    arithmetic and the compiled program's argument bytes (8 fake devices, fsdp 4 x tensor 2)."""
    cfg = _cfg()
    setting = plan_lib.Setting("none", 1, 2)
    mesh = setting.mesh(MeshConfig(), EIGHT)
    state = plan_lib.exported_state_bytes(cfg, plan_lib.MACHINES["v5e-256"], mesh, 64, 128)
    plan = plan_lib.make_plan(model_config(cfg), mesh, 64, 128).bytes_per_device
    assert state["params"] == plan["params"]
    # AdamW's two float32 moments, plus its step counters (int32 scalars, replicated).
    assert 0 < state["opt_state"] - plan["optimizer"] <= 16
    assert state["batch"] == 4 * 4 * 128 * 64 // 4  # 4 int32/float32 inputs
    compiled = plan_lib.compiled_footprint(cfg, mesh, setting, 64, 128)
    assert compiled["arguments"] == sum(state.values())


@functools.lru_cache(maxsize=None)
def _footprint(setting):
    model = model_config(_cfg())
    return plan_lib.arithmetic_footprint(model, setting.mesh(MeshConfig(), EIGHT), setting,
                                         64 // setting.micro_batches, 128, "cpu")


def test_settings_are_tried_stronger_remat_then_micro_batches_then_tensor():
    tried = plan_lib.settings_to_try(plan_lib.Setting("dots_saveable", 2, 1), 64, EIGHT)
    assert [(s.remat, s.micro_batches, s.tensor) for s in tried] == [
        ("dots_with_no_batch_dims_saveable", 2, 1), ("full", 2, 1),
        ("full", 4, 1), ("full", 8, 1),  # 8 sequences per micro-batch: one per device
        ("full", 2, 2), ("full", 4, 2), ("full", 8, 2), ("full", 16, 2),
        ("full", 2, 4), ("full", 4, 4), ("full", 8, 4), ("full", 16, 4), ("full", 32, 4)]


def test_a_setting_that_does_not_fit_names_the_next_that_would():
    configured = plan_lib.Setting("none", 1, 1)
    full_2, full_1 = (_footprint(plan_lib.Setting("full", k, 1))["total"] for k in (2, 1))
    assert full_2 < full_1
    # A budget between the two: full remat alone is not enough, two micro-batches are.
    machine = plan_lib.Machine("small", 8, (full_1 + full_2) / 2 / 2**30 / (1 - plan_lib.HEADROOM),
                               "cpu")
    fit = plan_lib.search_fit(machine, configured, 64, "arithmetic", _footprint)
    assert not fit.fits
    assert [s.remat for s, _ in fit.tried] == [
        "none", "dots_saveable", "dots_with_no_batch_dims_saveable", "full", "full"]
    setting, figures = fit.found
    assert (setting.remat, setting.micro_batches) == ("full", 2) and figures["total"] == full_2
    verdict = fit.verdict()
    assert verdict.startswith(f"does not fit: {fit.tried[0][1]['total'] / 2**30:.2f} GiB of ")
    assert verdict.endswith("would fit with remat=full, micro_batches=2, tensor=1 (4 sequence(s) "
                            f"per device) ({full_2 / 2**30:.2f} GiB)")
    too_big = plan_lib.search_fit(machine, configured, 64, "arithmetic",
                                  lambda setting: {"total": 2**40})
    assert "no setting tried fits" in too_big.verdict() and len(too_big.tried) == 1 + len(
        plan_lib.settings_to_try(configured, 64, machine))


def test_an_unknown_machine_is_named():
    with pytest.raises(ConfigError, match=r"--machine='v5e-512': unknown; one of v5e-256, "
                                          r"v5p-128, 8xh100"):
        plan_lib.find_machine("v5e-512")


@pytest.mark.integration
def test_command_line_a_batch_the_machine_cannot_split_is_one_line():
    result = subprocess.run([sys.executable, "-m", "cm3leon_jax.plan", "--config",
                             "experiments/model_tiny.py", "--machine", "v5e-256",
                             "--config.train.batch_size=64", "--lowered"], cwd=locations.ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "config error: v5e-256: a micro-batch of 64 sequences (train.batch_size / "
        "train.micro_batches) does not split over its 256 batch shards; make it a multiple of 256")
    assert "Traceback" not in result.stderr
