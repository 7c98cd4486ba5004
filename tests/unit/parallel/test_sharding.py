"""Sharding on the 8 fake CPU devices: same numbers on every mesh, layouts from the rule table.

Through the production training core (`train/decoder_task.py` loss and parameter shardings,
`train/state.py` sharded state creation, `train/step.py` jitted step): for meshes (data, fsdp,
tensor) = (8,1,1), (2,4,1), (2,2,2), (1,1,8) the loss and every gradient equal the single-device
result to 1e-5 (float32), and each weight (and its AdamW moments) is laid out exactly as
`config.MeshConfig.rules` says. Bad meshes fail with both numbers in the message.
"""

import functools

import jax
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from cm3leon_jax.config import DEFAULT_LOGICAL_AXIS_RULES, MeshConfig, ModelConfig, TrainConfig
from cm3leon_jax.models import init_params
from cm3leon_jax.parallel import mesh as mesh_lib
from cm3leon_jax.parallel import sharding as sharding_lib
from cm3leon_jax.train import decoder_task, optimizer as optimizer_lib, state as state_lib
from cm3leon_jax.train import step as step_lib

MODELS = {
    # GQA (16 query heads over 8 kv heads), QK-norm, untied output layer.
    "chameleon": ModelConfig(preset="chameleon", vocab_size=128, num_layers=2, d_model=64,
                             num_heads=16, num_kv_heads=8, mlp_dim=128, max_seq_len=32,
                             qk_norm=True, tie_embeddings=False,
                             zero_init_output_projections=False, z_loss=1e-3),
    "cm3leon": ModelConfig(preset="cm3leon", vocab_size=128, num_layers=2, d_model=64,
                           num_heads=8, max_seq_len=32, zero_init_output_projections=False),
}
MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 1, 8)]
RULES = MeshConfig().logical_axis_rules()
IMAGE_RANGE = (64, 128)  # ids 64..127 count as image tokens (text/ and image/ metrics)


def random_params(cfg, seed=0):
    shapes = jax.eval_shape(functools.partial(init_params, cfg), jax.random.key(0))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: (0.05 * rng.standard_normal(s.shape)).astype(np.float32),
                        shapes)


def packed_batch(seed=0, batch=8, length=16):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 128, (batch, length)).astype(np.int32)
    cut = rng.integers(3, length - 3, batch)
    segments = np.where(np.arange(length)[None, :] < cut[:, None], 1, 2).astype(np.int32)
    segments[:, -2:] = 0  # padding
    weights = rng.uniform(0.5, 1.0, (batch, length)).astype(np.float32)
    return {"ids": ids, "segment_ids": segments, "weights": weights}


def _loss(params, batch, cfg):
    """The production objective (cross-entropy + z-loss), per counted token."""
    total, sums = decoder_task.make_loss_fn(cfg, IMAGE_RANGE)(params, batch, None)
    return total / sums["tokens"]


@functools.lru_cache(maxsize=None)
def single_device_loss_and_grad(name):
    return jax.jit(jax.value_and_grad(functools.partial(_loss, cfg=MODELS[name])))


def make_mesh(shape):
    return mesh_lib.make_mesh(MeshConfig(data=shape[0], fsdp=shape[1], tensor=shape[2]))


@pytest.mark.parametrize("name,shape", [("chameleon", s) for s in MESHES]
                         + [("cm3leon", (2, 2, 2)), ("cm3leon", (1, 1, 8))])
def test_sharded_loss_and_gradients_equal_single_device(name, shape):
    cfg = MODELS[name]
    params, batch = random_params(cfg), packed_batch()
    expected_loss, expected_grads = single_device_loss_and_grad(name)(params, batch)

    mesh = make_mesh(shape)
    param_shardings = decoder_task.param_shardings(cfg, mesh, RULES)
    sharded_params = jax.device_put(params, param_shardings)
    loss_and_grad = sharding_lib.ShardedFunction(jax.jit(
        jax.value_and_grad(functools.partial(_loss, cfg=cfg)),
        in_shardings=(param_shardings, sharding_lib.batch_sharding(mesh, RULES)),
        out_shardings=(sharding_lib.replicated(mesh), param_shardings)), mesh, RULES)
    loss, grads = loss_and_grad(sharded_params, batch)

    np.testing.assert_allclose(loss, expected_loss, rtol=1e-5, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
                 grads, expected_grads)
    jax.tree.map(lambda g, s: _assert_same_layout(g.sharding, s), grads, param_shardings)


def _normalized(spec):
    entries = list(spec)
    while entries and entries[-1] is None:
        entries.pop()
    return tuple(entries)


def _assert_same_layout(actual, expected):
    assert _normalized(actual.spec) == _normalized(expected.spec), (actual.spec, expected.spec)


# What the default rule table means for each weight on mesh (2, 2, 2), written out by hand.
EXPECTED_LAYOUT = {
    "embed_tokens/embedding": P("tensor", "fsdp"),
    "embed_positions/embedding": P(None, "fsdp"),
    "lm_head/kernel": P("fsdp", "tensor"),
    "final_norm/scale": P("fsdp"),
    "layers/attention/q_proj/kernel": P(None, "fsdp", "tensor"),
    "layers/attention/k_proj/kernel": P(None, "fsdp", "tensor"),
    "layers/attention/v_proj/kernel": P(None, "fsdp", "tensor"),
    "layers/attention/o_proj/kernel": P(None, "tensor", None, "fsdp"),
    "layers/attention/q_norm/scale": P(None, "tensor"),
    "layers/attention/q_norm/bias": P(None, "tensor"),
    "layers/attention/k_norm/scale": P(None, "tensor"),
    "layers/attention/k_norm/bias": P(None, "tensor"),
    "layers/attention_norm/scale": P(None, "fsdp"),
    "layers/mlp_norm/scale": P(None, "fsdp"),
    "layers/mlp/gate_proj/kernel": P(None, "fsdp", "tensor"),
    "layers/mlp/up_proj/kernel": P(None, "fsdp", "tensor"),
    "layers/mlp/down_proj/kernel": P(None, "tensor", "fsdp"),
    "layers/mlp/fc1/kernel": P(None, "fsdp", "tensor"),
    "layers/mlp/fc2/kernel": P(None, "tensor", "fsdp"),
}


def _by_path(tree):
    return {"/".join(k.key for k in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(
                tree, is_leaf=lambda x: isinstance(x, NamedSharding))[0]}


def test_train_state_is_created_sharded_and_the_step_donates_and_matches():
    cfg = MODELS["chameleon"]
    mesh = make_mesh((2, 2, 2))
    train = TrainConfig(steps=10, warmup_steps=0, lr=1e-3)
    tx = optimizer_lib.make_optimizer(train)
    param_shardings = decoder_task.param_shardings(cfg, mesh, RULES)
    state, shardings = state_lib.create_sharded_train_state(
        functools.partial(decoder_task.init_params, cfg), param_shardings, tx, mesh,
        jax.random.key(0))

    params = _by_path(state.params)
    assert set(params) <= set(EXPECTED_LAYOUT)
    for path, value in params.items():
        _assert_same_layout(value.sharding, NamedSharding(mesh, EXPECTED_LAYOUT[path]))
    # AdamW moments live exactly where their parameters do; counts and the rng are replicated.
    moments = 0
    for path, value in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]:
        name = "/".join(k.key for k in path if isinstance(k, jax.tree_util.DictKey))
        if name in params:
            _assert_same_layout(value.sharding, params[name].sharding)
            moments += 1
        else:
            assert value.ndim == 0 and _normalized(value.sharding.spec) == (), path
    assert moments == 2 * len(params)
    for scalar in (state.step, state.skipped, state.rng):
        assert _normalized(scalar.sharding.spec) == ()

    batch = packed_batch(seed=1)
    host_params = jax.tree.map(np.asarray, state.params)
    loss_fn = decoder_task.make_loss_fn(cfg, IMAGE_RANGE)
    _, sums = jax.jit(loss_fn)(host_params, batch, None)
    expected_loss = sums["loss"] / sums["tokens"]  # the `loss` metric: cross-entropy per token
    step = step_lib.jit_train_step(loss_fn, tx, optimizer_lib.learning_rate(train), shardings,
                                   sharding_lib.batch_sharding(mesh, RULES))
    old_state = state
    with sharding_lib.sharding_context(mesh, RULES):
        state, metrics = step(state, batch)
    np.testing.assert_allclose(metrics["loss"], expected_loss, rtol=1e-5)
    assert int(state.step) == 1 and float(metrics["finite"]) == 1.0
    assert jax.tree.leaves(old_state.params)[0].is_deleted()  # donated: updated in place
    for path, value in _by_path(state.params).items():
        _assert_same_layout(value.sharding, params[path].sharding)
        assert not np.array_equal(np.asarray(value), host_params_path(host_params, path))


def host_params_path(tree, path):
    for key in path.split("/"):
        tree = tree[key]
    return tree


def test_rule_table_drives_the_layout():
    """A different table gives a different layout (nothing is hard-coded in the model)."""
    rules = MeshConfig(rules=(("batch", "data"), ("embed", None), ("mlp", ("fsdp", "tensor")),
                              ("vocab", "fsdp"), ("heads", None), ("kv_heads", None),
                              ("head_dim", "tensor"), ("length", None),
                              ("layers", None))).logical_axis_rules()
    mesh = make_mesh((2, 2, 2))
    shardings = decoder_task.param_shardings(MODELS["cm3leon"], mesh, rules)
    layout = {k: _normalized(v.spec) for k, v in _by_path(shardings).items()}
    assert layout["layers/mlp/fc1/kernel"] == (None, None, ("fsdp", "tensor"))
    assert layout["layers/attention/q_proj/kernel"] == (None, None, None, "tensor")
    assert layout["embed_tokens/embedding"] == ("fsdp",)
    assert sharding_lib.batch_sharding(mesh, rules).spec[0] == "data"


def test_mesh_axes_are_auto_and_minus_one_takes_the_rest():
    mesh = mesh_lib.make_mesh(MeshConfig(data=2, fsdp=-1, tensor=2))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert mesh.axis_types == (AxisType.Auto,) * 3


@pytest.mark.parametrize("mesh,message", [
    (MeshConfig(data=2, fsdp=2, tensor=4),
     r"mesh data=2 x fsdp=2 x tensor=4 needs 16 devices, but 8 devices are available"),
    (MeshConfig(data=-1, fsdp=3, tensor=1),
     r"the fixed axes multiply to 3, which does not divide the 8 available devices"),
])
def test_mesh_that_does_not_match_the_devices_is_refused(mesh, message):
    with pytest.raises(ValueError, match=message):
        mesh_lib.make_mesh(mesh)


def test_dimension_not_divisible_by_its_mesh_axis_is_refused():
    cfg = ModelConfig(preset="cm3leon", vocab_size=128, num_layers=1, d_model=64, num_heads=4,
                      max_seq_len=32)
    with pytest.raises(ValueError, match=r"parameter layers/attention/k_proj/kernel "
                                         r"\(1, 64, 4, 16\): dimension 2 has size 4, which mesh "
                                         r"axes tensor \(size 8\) do not divide"):
        decoder_task.param_shardings(cfg, make_mesh((1, 1, 8)), RULES)
    with pytest.raises(ValueError, match=r"global batch size 6 is not divisible by mesh axes "
                                         r"\('data', 'fsdp'\) of size 4"):
        sharding_lib.sequences_per_shard(6, dict(make_mesh((2, 2, 2)).shape), RULES)


def test_default_rules_name_every_logical_axis_once():
    names = [name for name, _ in DEFAULT_LOGICAL_AXIS_RULES]
    assert len(names) == len(set(names))
    assert set(names) == {"batch", "length", "embed", "mlp", "heads", "kv_heads", "head_dim",
                          "vocab", "layers"}
