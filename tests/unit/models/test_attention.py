"""Attention implementations (`config.model.attention`): the Pallas splash kernel against the xla
reference, `auto` selection, errors before compile, and KV-cache decoding with every choice.

On CPU the splash kernel runs in Pallas interpret mode (same tiling as on TPU, slow), so the shapes
are the smallest it tiles: sequences of 128-256 tokens, heads 64 wide. Float32, to 1e-5.
"""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cm3leon_jax.config import ConfigError, MeshConfig, ModelConfig
from cm3leon_jax.models import Decoder, init_cache
from cm3leon_jax.models import attention as attention_lib
from cm3leon_jax.models import loss as loss_lib
from cm3leon_jax.parallel import mesh as mesh_lib
from cm3leon_jax.parallel import sharding as sharding_lib

TOL = dict(rtol=1e-5, atol=1e-5)
RULES = MeshConfig().logical_axis_rules()


def packed_segments(batch, length, seed=0):
    """Two or three documents per row and trailing padding (segment 0)."""
    rng = np.random.default_rng(seed)
    segments = np.ones((batch, length), np.int32)
    for row in range(batch):
        cuts = np.sort(rng.choice(np.arange(10, length - 20), 2, replace=False))
        segments[row, cuts[0]:] = 2
        segments[row, cuts[1]:] = 3
        segments[row, length - 7 - row:] = 0
    return jnp.asarray(segments)


def qkv(batch, length, heads, kv_heads, head_dim=64, seed=0):
    keys = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(keys[0], (batch, length, heads, head_dim))
    k = jax.random.normal(keys[1], (batch, length, kv_heads, head_dim))
    v = jax.random.normal(keys[2], (batch, length, kv_heads, head_dim))
    cotangent = jax.random.normal(keys[3], q.shape)
    return q, k, v, cotangent


@functools.lru_cache(maxsize=None)
def _value_and_grads(implementation):
    def loss(q, k, v, segments, cotangent):
        out = attention_lib.attention(q, k, v, query_segment_ids=segments,
                                      key_segment_ids=segments, implementation=implementation)
        return jnp.sum(out * cotangent), out

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))


# (heads, kv_heads, length): multi-head, grouped-query, multi-query.
@pytest.mark.parametrize("heads,kv_heads,length", [(2, 2, 256), (4, 2, 128), (4, 1, 128)])
def test_splash_matches_xla_forward_and_gradients(heads, kv_heads, length):
    q, k, v, cotangent = qkv(2, length, heads, kv_heads)
    segments = packed_segments(2, length)
    (_, want), want_grads = _value_and_grads("xla")(q, k, v, segments, cotangent)
    (_, got), got_grads = _value_and_grads("splash")(q, k, v, segments, cotangent)
    np.testing.assert_allclose(got, want, **TOL)
    for got_grad, want_grad in zip(got_grads, want_grads):
        np.testing.assert_allclose(got_grad, want_grad, **TOL)


# ---------------------------------------------------------------------------------------------
# the decoder on the 8 fake devices: shard_map over batch and heads
# ---------------------------------------------------------------------------------------------

# GQA (4 query heads over 2 kv heads, 64 wide), QK-norm and RoPE; one layer keeps compiles short.
MESH_MODEL = ModelConfig(preset="chameleon", vocab_size=128, num_layers=1, d_model=64,
                         num_heads=4, num_kv_heads=2, head_dim=64, mlp_dim=128, max_seq_len=128,
                         qk_norm=True, tie_embeddings=False, zero_init_output_projections=False)


def random_params(cfg, seed=0):
    shapes = jax.eval_shape(lambda: nn.meta.unbox(
        Decoder(cfg).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: (0.05 * rng.standard_normal(s.shape)).astype(np.float32),
                        shapes)


def _loss(params, tokens, segments, cfg):
    logits = Decoder(cfg).apply({"params": params}, tokens, segments)
    targets, weights = loss_lib.next_token_targets(tokens, segments)
    sums = loss_lib.cross_entropy_sums(logits, targets, weights, 0.0)
    return sums.cross_entropy / jnp.maximum(jnp.sum(weights), 1.0)


@pytest.mark.parametrize("shape", [(2, 2, 2), (8, 1, 1), (1, 4, 2)])
def test_splash_decoder_on_a_mesh_matches_xla_on_one_device(shape):
    """Meshes (data, fsdp, tensor): (2, 2, 2) splits the batch 4 ways and query and kv heads 2
    ways; (8, 1, 1) the batch alone; (1, 4, 2) fsdp-sharded parameters with split heads."""
    cfg = MESH_MODEL
    params = random_params(cfg)
    tokens = jax.random.randint(jax.random.key(1), (8, 128), 0, 128, dtype=jnp.int32)
    segments = packed_segments(8, 128)
    want_loss, want_grads = jax.jit(jax.value_and_grad(functools.partial(_loss, cfg=cfg)))(
        params, tokens, segments)

    splash = dataclasses.replace(cfg, attention="splash")
    mesh = mesh_lib.make_mesh(MeshConfig(*shape))
    boxed = jax.eval_shape(lambda: Decoder(splash).init(jax.random.key(0),
                                                         jnp.zeros((1, 1), jnp.int32))["params"])
    param_shardings = sharding_lib.logical_shardings(sharding_lib.logical_specs(boxed), mesh,
                                                     RULES)
    batch_sharding = sharding_lib.batch_sharding(mesh, RULES)
    loss_and_grad = sharding_lib.ShardedFunction(jax.jit(
        jax.value_and_grad(functools.partial(_loss, cfg=splash)),
        in_shardings=(param_shardings, batch_sharding, batch_sharding)), mesh, RULES)
    lowered = loss_and_grad.lower(params, tokens, segments).as_text()
    assert "shard_map" in lowered or "sdy.manual_computation" in lowered
    loss, grads = loss_and_grad(jax.device_put(params, param_shardings), tokens, segments)
    np.testing.assert_allclose(loss, want_loss, **TOL)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), grads, want_grads)


def test_partition_specs_follow_the_rule_table():
    specs = attention_lib.splash_partition_specs({"data": 2, "fsdp": 2, "tensor": 2}, RULES,
                                                 batch=8, heads=4, kv_heads=2)
    assert specs == (jax.sharding.PartitionSpec(("data", "fsdp"), None, "tensor", None),
                     jax.sharding.PartitionSpec(("data", "fsdp"), None, "tensor", None),
                     jax.sharding.PartitionSpec(("data", "fsdp"), None))
    # One kv head cannot be split over tensor=2: heads stay whole on every device.
    q_spec, kv_spec, _ = attention_lib.splash_partition_specs(
        {"data": 2, "fsdp": 2, "tensor": 2}, RULES, batch=8, heads=4, kv_heads=1)
    assert q_spec[2] is None and kv_spec[2] is None


# ---------------------------------------------------------------------------------------------
# KV cache: decode steps take the xla path whatever the choice
# ---------------------------------------------------------------------------------------------

def test_kv_cache_decoding_with_splash_matches_full_forward():
    """The full forward runs the kernel; prefill and decode steps with the cache take xla."""
    cfg = dataclasses.replace(MESH_MODEL, attention="splash")
    params = random_params(cfg)
    tokens = jax.random.randint(jax.random.key(2), (2, 128), 0, 128, dtype=jnp.int32)
    full = jax.jit(lambda t: Decoder(cfg).apply({"params": params}, t))(tokens)
    step = jax.jit(lambda t, c: Decoder(cfg).apply({"params": params}, t, cache=c))
    cache = init_cache(cfg, batch_size=2, max_len=128)
    prefill, cache = step(tokens[:, :125], cache)
    outputs = [prefill]
    for t in range(125, 128):
        logits, cache = step(tokens[:, t:t + 1], cache)
        outputs.append(logits)
    np.testing.assert_allclose(jnp.concatenate(outputs, axis=1), full, atol=2e-5)


# ---------------------------------------------------------------------------------------------
# selection and errors before compile
# ---------------------------------------------------------------------------------------------

def test_auto_picks_per_backend_and_falls_back_where_the_kernel_cannot_tile():
    select = functools.partial(attention_lib.select_implementation, "auto", head_dim=64)
    assert select(q_len=512, kv_len=512, backend="tpu") == "splash"
    assert select(q_len=500, kv_len=500, backend="tpu") == "xla"
    assert select(q_len=1, kv_len=512, self_attention=False, backend="tpu") == "xla"
    assert select(q_len=512, kv_len=512, dtype=jnp.bfloat16, backend="gpu") == "cudnn"
    assert select(q_len=512, kv_len=512, dtype=jnp.float32, backend="gpu") == "xla"
    assert select(q_len=512, kv_len=512, backend="cpu") == "xla"
    assert attention_lib.select_implementation("splash", q_len=1, kv_len=512, head_dim=64,
                                               self_attention=False, backend="tpu") == "xla"
    # shorter than one tile (Decoder.init's dummy batch): a single tile, computed by xla
    assert attention_lib.select_implementation("splash", q_len=1, kv_len=1, head_dim=64,
                                               backend="tpu") == "xla"


def test_splash_on_a_sequence_it_cannot_tile_fails_before_compile():
    q, k, v, _ = qkv(1, 200, 2, 2)
    ones = jnp.ones((1, 200), jnp.int32)
    with pytest.raises(ConfigError, match=r"config.model.attention='splash': it tiles sequences "
                                          r"in blocks of 128 tokens, and this one is 200 long"):
        jax.eval_shape(functools.partial(attention_lib.attention, implementation="splash",
                                         query_segment_ids=ones, key_segment_ids=ones), q, k, v)


def test_splash_with_a_head_width_it_cannot_tile_is_a_config_error():
    with pytest.raises(ConfigError, match=r"config.model.attention='splash': the splash kernel "
                                          r"tiles heads of a multiple of 64 wide, and head_dim "
                                          r"resolves to 32"):
        ModelConfig(d_model=128, num_heads=4, attention="splash").check("model")


def test_splash_on_gpu_and_unknown_choices_are_refused():
    with pytest.raises(ConfigError, match=r"config.model.attention='splash': runs only on tpu, "
                                          r"cpu backends.*'gpu'; use 'cudnn', 'xla' or 'auto'"):
        attention_lib.require_supported("splash", "gpu")
    with pytest.raises(ConfigError, match=r"config.model.attention='flash': must be one of "
                                          r"'auto', 'xla', 'cudnn', 'splash'"):
        attention_lib.require_supported("flash")
