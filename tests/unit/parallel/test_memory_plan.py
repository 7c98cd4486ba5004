"""The plan tool: counts equal the real model's, memory the real shards', without any devices."""

import dataclasses
import functools
import importlib.util
import math
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from cm3leon_jax.models import accounting
from cm3leon_jax.parallel import memory_plan as plan_lib
from cm3leon_jax.config import MeshConfig, ModelConfig, model_config
from cm3leon_jax.models import init_params
from cm3leon_jax.parallel import mesh as mesh_lib
from cm3leon_jax.train import decoder_task
import locations

REPO = locations.ROOT

CM3LEON = ModelConfig(preset="cm3leon", vocab_size=256, num_layers=2, d_model=64, num_heads=8,
                      max_seq_len=32)
CHAMELEON = ModelConfig(preset="chameleon", vocab_size=256, num_layers=2, d_model=64,
                        num_heads=8, num_kv_heads=4, mlp_dim=96, max_seq_len=32, qk_norm=True,
                        tie_embeddings=False)


def expected_count(cfg: ModelConfig) -> int:
    """The parameter count written out from the architecture."""
    d, layers, vocab, mlp = cfg.d_model, cfg.num_layers, cfg.vocab_size, cfg.hidden_dim
    heads, kv, hd = cfg.num_heads, cfg.kv_heads, cfg.resolved_head_dim
    attention = d * (heads + 2 * kv) * hd + heads * hd * d
    if cfg.preset == "cm3leon":  # no norm parameters, GELU MLP, position table
        per_layer = attention + 2 * d * mlp
        return vocab * d * (1 if cfg.tie_embeddings else 2) + cfg.max_seq_len * d + \
            layers * per_layer
    qk_norm = 2 * (heads + kv) * hd if cfg.qk_norm else 0
    per_layer = attention + 3 * d * mlp + 2 * d + qk_norm
    return vocab * d * (1 if cfg.tie_embeddings else 2) + d + layers * per_layer


@pytest.mark.parametrize("cfg", [CM3LEON, CHAMELEON], ids=["cm3leon", "chameleon"])
def test_parameter_count_equals_the_model(cfg):
    plan = plan_lib.make_plan(cfg, MeshConfig(data=8, fsdp=1, tensor=1), batch_size=8)
    assert plan.num_params == accounting.count_params(cfg) == expected_count(cfg)


def test_parameter_count_equals_an_initialised_model():
    params = jax.jit(functools.partial(init_params, CM3LEON))(jax.random.key(0))
    actual = sum(x.size for x in jax.tree.leaves(params))
    assert accounting.count_params(CM3LEON) == actual


def _experiments():
    for path in sorted((REPO / "experiments").glob("*.py")):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if re.search(r"^Parameters", module.__doc__ or "", re.M) and "model" in \
                module.get_config(None):
            yield path.stem, module


@pytest.mark.parametrize("name,module", list(_experiments()), ids=lambda x: x
                         if isinstance(x, str) else "")
def test_experiment_docstrings_state_the_exact_parameter_count(name, module):
    stated = re.search(r"^Parameters.*?: ([\d,]+)", module.__doc__, re.M).group(1)
    assert accounting.count_params(model_config(module.get_config(None))) == int(
        stated.replace(",", "")), name


def test_flops_per_token():
    plan = plan_lib.make_plan(CM3LEON, MeshConfig(data=1, fsdp=1, tensor=1), seq_len=32)
    lookup = CM3LEON.max_seq_len * CM3LEON.d_model  # tied: only the position table is a lookup
    assert plan.flops_per_token["matmul_6n"] == 6 * (plan.num_params - lookup)
    assert plan.flops_per_token["attention"] == 12 * 2 * 32 * 64


@pytest.mark.parametrize("shape", [(2, 2, 2), (1, 4, 2)])
def test_per_device_bytes_equal_the_real_shards(shape):
    """Plan arithmetic vs. the bytes each device really holds when the weights are laid out."""
    mesh_config = MeshConfig(data=shape[0], fsdp=shape[1], tensor=shape[2])
    plan = plan_lib.make_plan(CHAMELEON, mesh_config, batch_size=8)
    mesh = mesh_lib.make_mesh(mesh_config)
    shardings = decoder_task.param_shardings(CHAMELEON, mesh, mesh_config.logical_axis_rules())
    abstract = jax.eval_shape(functools.partial(decoder_task.init_params, CHAMELEON),
                              jax.random.key(0))
    params = jax.device_put(
        jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract), shardings)
    device = jax.devices()[0]
    held = sum(shard.data.nbytes for leaf in jax.tree.leaves(params)
               for shard in leaf.addressable_shards if shard.device == device)
    memory = plan.bytes_per_device
    assert memory["params"] == held
    assert memory["optimizer"] == 2 * held  # two float32 moments per float32 parameter
    assert plan.sequences_per_device == 8 // (shape[0] * shape[1])


def test_activation_estimates_are_ordered_and_sized():
    cfg = dataclasses.replace(CM3LEON, remat="full")
    plan = plan_lib.make_plan(cfg, MeshConfig(data=1, fsdp=1, tensor=1), batch_size=2)
    per_layer = plan.bytes_per_device["activations_per_layer"]
    block_input = 2 * 32 * 64 * 4  # what full remat keeps: each block's input
    assert block_input <= per_layer["full"] < 1.2 * block_input
    assert per_layer["full"] < per_layer["dots_with_no_batch_dims_saveable"] \
        < per_layer["dots_saveable"] < per_layer["none"]
    head = plan.bytes_per_device["activations_output_head"]
    logits = 2 * 32 * 256 * 4  # float32 logits, kept for the softmax gradient
    assert logits <= head < logits + 4 * block_input  # + the final norm's input/output
    assert plan.bytes_per_device["activations"] == 2 * per_layer["full"] + head
    # Tensor parallelism splits the per-layer work (heads and MLP columns) but not the input.
    split = plan_lib.make_plan(cfg, MeshConfig(data=1, fsdp=1, tensor=2), batch_size=2)
    split_layer = split.bytes_per_device["activations_per_layer"]
    assert split_layer["none"] < per_layer["none"] and split_layer["full"] == per_layer["full"]


def _run_plan(*args):
    return subprocess.run([sys.executable, "-m", "cm3leon_jax.plan", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.integration
def test_command_line():
    result = _run_plan("--config", "experiments/model_tiny.py", "--mesh", "data=2,fsdp=4,tensor=1",
                       "--batch_size", "16")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "parameters: 172,032" in result.stdout
    assert "mesh: data=2 x fsdp=4 x tensor=1 (8 devices), 2 sequence(s) per device" in \
        result.stdout
    bad = _run_plan("--config", "experiments/model_tiny.py", "--mesh", "data=2,model=4")
    assert bad.returncode == 2
    assert "--mesh='data=2,model=4': expected comma-separated axis=size" in bad.stderr
    uneven = _run_plan("--config", "experiments/model_tiny.py", "--mesh", "tensor=8")
    assert uneven.returncode == 2
    assert "dimension 2 has size 4, which mesh axes tensor (size 8) do not divide" in \
        uneven.stderr


def test_plan_needs_no_devices_for_large_meshes():
    cfg = model_config(_load("cm3leon_7b").get_config(None))
    plan = plan_lib.make_plan(cfg, MeshConfig(data=16, fsdp=32, tensor=8), batch_size=512)
    assert plan.mesh == {"data": 16, "fsdp": 32, "tensor": 8}
    assert plan.sequences_per_device == 1
    # Everything is split 256 ways except the position table (split over fsdp only).
    assert plan.bytes_per_device["params"] < math.ceil(plan.num_params * 4 / 256) * 1.03


def _load(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_attention_bytes_per_implementation():
    """At 1,024 tokens the xla core keeps O(T^2) (float32 scores, boolean block masks), the
    kernels O(T): q, k, v, output and a float32 log-sum-exp per query row."""
    cfg = dataclasses.replace(CHAMELEON, max_seq_len=1024, head_dim=64)
    plan = plan_lib.make_plan(cfg, MeshConfig(data=1, fsdp=1, tensor=1), batch_size=1)
    attention = plan.bytes_per_device["attention_per_layer"]
    heads, kv_heads, length = cfg.num_heads, cfg.kv_heads, 1024
    kernel = 4 * length * 64 * (2 * heads + 2 * kv_heads) + 4 * heads * length + 4 * length
    assert attention["splash"]["residuals"] == kernel == attention["cudnn"]["residuals"]
    assert attention["xla"]["scores"] == 4 * heads * length * length * 9 // 16  # 8 blocks
    assert attention["xla"]["total"] > 4 * attention["splash"]["total"]
    untileable = plan_lib.make_plan(dataclasses.replace(cfg, max_seq_len=1000),
                                    MeshConfig(data=1, fsdp=1, tensor=1), batch_size=1)
    assert "multiple of 128" in untileable.bytes_per_device["attention_per_layer"]["splash"][
        "unsupported"]
