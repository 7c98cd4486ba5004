"""The TPU and GPU programs build on this CPU-only machine (`parallel/lowering.py`): the sharded
train step and the KV-cache decode step of both presets at the 350M shapes, exported for `tpu`
with the splash kernel and for `cuda` with XLA attention, on the 8 fake devices' meshes."""

import dataclasses
import importlib.util
import re

import pytest

from cm3leon_jax.config import ConfigError, MeshConfig
from cm3leon_jax.parallel import lowering
import locations

REPO = locations.ROOT
MESHES = {"data": MeshConfig(data=8, fsdp=1, tensor=1),
          "fsdp": MeshConfig(data=1, fsdp=8, tensor=1),
          "fsdp_x_tensor": MeshConfig(data=1, fsdp=4, tensor=2)}
TARGETS = (("tpu", "splash"), ("cuda", "xla"))


def _config(preset):
    spec = importlib.util.spec_from_file_location("c", REPO / "experiments" / "cm3leon_350m.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config()
    if preset == "chameleon":  # the Chameleon block family at the same size
        cfg.model.update(preset="chameleon", qk_norm=True, z_loss=1e-5)
    return cfg


def _arg_shardings(exported):
    """{argument location: its Shardy sharding} of the exported main function."""
    text = exported.mlir_module()
    main = text[text.index("func.func public @main"):]
    main = main[:main.index("{\n")]
    return dict((where, spec) for spec, where in re.findall(
        r'sdy\.sharding = #sdy\.sharding<@mesh, (\[[^>]*\])>[^}]*\} loc\("([^"]+)"\)', main))


@pytest.mark.parametrize("preset", ["cm3leon", "chameleon"])
@pytest.mark.parametrize("target,attention", TARGETS)
@pytest.mark.parametrize("mesh_name", list(MESHES))
def test_train_step_lowers_for_the_accelerator(preset, target, attention, mesh_name):
    exported = lowering.export_train_step(_config(preset), target, MESHES[mesh_name],
                                          batch_size=8, seq_len=4096, attention=attention)
    assert exported.platforms == (target,) and exported.nr_devices == 8
    text = exported.mlir_module()
    # The real kernel on TPU (Mosaic), not Pallas interpret mode; XLA attention for CUDA.
    assert ("tpu_custom_call" in text) == (target == "tpu")
    assert "tf.aliasing_output" in text  # the train state is donated
    mesh = MESHES[mesh_name]
    sizes = {"data": mesh.data, "fsdp": mesh.fsdp, "tensor": mesh.tensor}

    def ways(spec):  # how many pieces a sharding cuts its array into
        pieces = 1
        for axis in re.findall(r'"(\w+)"', spec):
            pieces *= sizes[axis]
        return pieces

    params = {where: spec for where, spec in _arg_shardings(exported).items()
              if where.startswith("state.params")}
    embedding = next(spec for where, spec in params.items() if "embed_tokens" in where)
    # Data parallelism replicates the parameters; fsdp (x tensor) cuts each over all 8 devices.
    assert ways(embedding) == (1 if mesh_name == "data" else 8), embedding
    if mesh_name == "fsdp_x_tensor":
        assert any('"tensor"' in spec for spec in params.values())


@pytest.mark.parametrize("preset", ["cm3leon", "chameleon"])
@pytest.mark.parametrize("target,attention", TARGETS)
def test_decode_step_lowers_for_the_accelerator(preset, target, attention):
    exported = lowering.export_decode_step(_config(preset), target, MESHES["fsdp_x_tensor"],
                                           batch_size=16, max_len=4096, attention=attention)
    assert exported.platforms == (target,)
    logits, _ = exported.out_avals[0], exported.out_avals[1:]
    assert logits.shape == (16, 1, 65536)


def test_cudnn_lowers_where_cudnn_is_present():
    try:
        exported = lowering.export_train_step(_config("cm3leon"), "cuda", MESHES["data"],
                                              batch_size=8, seq_len=4096, attention="cudnn")
    except RuntimeError as error:
        if "cuDNN is not detected" in str(error):
            pytest.skip(f"this machine has no cuDNN: {error}")
        raise
    assert exported.platforms == ("cuda",)


def test_shapes_and_meshes_that_cannot_work_fail_before_lowering_by_name():
    cfg = _config("cm3leon")
    narrow = _config("cm3leon")
    narrow.model.update(num_heads=32)  # head_dim 32: splash tiles heads of a multiple of 64
    with pytest.raises(ConfigError, match="head_dim resolves to 32"):
        lowering.export_train_step(narrow, "tpu", MESHES["data"], batch_size=8, seq_len=4096,
                                   attention="splash")
    with pytest.raises(ConfigError, match="multiple of"):
        lowering.export_train_step(cfg, "tpu", MESHES["data"], batch_size=8, seq_len=4000,
                                   attention="splash")
    with pytest.raises(ValueError, match="batch"):
        lowering.export_train_step(cfg, "cuda", MESHES["data"], batch_size=12, seq_len=4096)
    odd = dataclasses.replace(MESHES["data"], data=1, tensor=8)
    odd_heads = _config("cm3leon")
    odd_heads.model.update(num_heads=12, d_model=768)  # 12 heads do not split over 8
    with pytest.raises(ValueError, match="tensor"):
        lowering.export_train_step(odd_heads, "cuda", odd, batch_size=8, seq_len=4096)
    with pytest.raises(ConfigError, match="runs only on gpu"):
        lowering.export_train_step(cfg, "tpu", MESHES["data"], batch_size=8, seq_len=4096,
                                   attention="cudnn")
