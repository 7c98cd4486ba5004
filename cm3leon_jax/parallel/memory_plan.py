r"""A run's plan before buying it: parameters, FLOPs per token and per-device memory on a mesh
(`python -m cm3leon_jax.plan` prints it; the FLOP accounting is `models/accounting.py`).

Pure arithmetic on `jax.eval_shape` shapes: nothing is allocated and the mesh need not exist (a
mesh of 512 devices plans fine on a laptop). Figures:

* parameters: the exact count of the model's weights.
* FLOPs per trained token: 6 * N_matmul (forward 2N, backward 4N; N_matmul = weights that enter a
  matmul: everything except the position table and, when untied, the input embedding table, which
  are lookups) + 12 * layers * seq_len * heads * head_dim (attention scores and the weighted sum of
  values, forward + backward, over the full seq_len x seq_len square as the `xla` implementation
  computes it; a causal kernel skips about half). This is the PaLM-paper accounting used for MFU.
* per-device bytes of parameters (param_dtype), gradients (param_dtype), optimizer state (AdamW:
  two float32 moments), each divided by the mesh axes the rule table puts on each dimension.
* activations: the residuals JAX's autodiff keeps for the backward pass of one block, measured by
  tracing `jax.vjp` of one block under each remat policy on this device's share of the work (its
  batch shard, its heads / kv heads / MLP columns under tensor parallelism) at batch 1 and 2 and
  taking the difference (weights and their casts do not grow with the batch and drop out). It is
  an upper bound of what XLA keeps alive (XLA can fuse some residuals away); inputs shared by all
  layers (segment ids, RoPE tables) are counted in every layer. The output head (final norm,
  logits and float32 loss) is counted once. Total = layers x per-layer (configured remat) + head.
* attention core per layer, by implementation (`config.model.attention`: xla, splash, cudnn), on
  this device's sequences and heads at the plan's seq_len: `residuals`, what the backward keeps
  (measured like the activations, from `jax.vjp` of the core alone: q, k, v, output, softmax
  statistics and, for xla, the boolean masks of its query blocks; cudnn's is the same arithmetic
  as splash's, written out, since it cannot be traced off a GPU), and `scores`, one float32 copy
  of the score tiles an implementation has in memory at once: xla materialises every score
  of its query blocks' lower triangle (its backward holds two or three such buffers), the
  kernels one block_q x block_kv tile per program (in on-chip memory, nothing in HBM on a TPU /
  GPU). `total` = residuals + scores. A kernel that cannot tile the shape reports why instead.

On a machine (`MACHINES`, `plan --machine`): the config's micro-batch on data=1 x fsdp=the
machine's devices, judged against its HBM less `HEADROOM`; when it does not fit, `search_fit`
tries a stronger remat, then more micro-batches, then tensor parallelism, and names the first
that fits. Two sources of figures: `arithmetic_footprint` (the plan above, plus the temporaries
the backward pass holds for one block) and, with `--lowered`, `compiled_footprint` (the memory
analysis of the real train step as this process's compiler lays it out) beside
`exported_state_bytes` (the train state as the step exported for the target shards it).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from cm3leon_jax.models import accounting
from cm3leon_jax.config import (MESH_AXES, REMAT_POLICIES, ConfigError, MeshConfig, ModelConfig)
from cm3leon_jax.models import attention as attention_lib, platform
from cm3leon_jax.models.decoder import (REMAT_POLICIES as CHECKPOINT_POLICIES, Block,
                                        BlockInputs, _norm)
from cm3leon_jax.models.layers import DTYPES, Projection
from cm3leon_jax.models.loss import cross_entropy_sums
from cm3leon_jax.parallel import lowering, sharding as sharding_lib

ADAMW_MOMENT_BYTES = 2 * 4  # two float32 moments per parameter element


def parse_mesh(text: str, base: MeshConfig) -> MeshConfig:
    """`data=2,fsdp=4,tensor=1` on top of `base` (its rules kept, axes not named set to 1)."""
    sizes = {axis: 1 for axis in MESH_AXES}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or name not in MESH_AXES or not value.lstrip("-").isdigit():
            raise ConfigError(f"--mesh={text!r}: expected comma-separated axis=size with axes "
                              f"{', '.join(MESH_AXES)}, e.g. data=2,fsdp=4,tensor=1")
        sizes[name] = int(value)
    result = dataclasses.replace(base, **sizes)
    result.check("mesh")
    if -1 in result.shape:
        raise ConfigError(f"--mesh={text!r}: give every axis a size (-1 needs real devices)")
    return result


def _split(size: int, logical: str, rules, axis_sizes: Mapping[str, int], what: str) -> int:
    """`size` divided by the mesh axes `logical` maps to (in an activation's context)."""
    activation_axes = {"heads": ("batch", "length", "heads", "head_dim"),
                       "kv_heads": ("batch", "length", "kv_heads", "head_dim"),
                       "mlp": ("batch", "length", "mlp"), "vocab": ("batch", "length", "vocab"),
                       "length": ("batch", "length", "embed")}[logical]
    axes = nn.logical_to_mesh_axes(activation_axes, rules)[activation_axes.index(logical)]
    return sharding_lib.local_shape((size,), jax.sharding.PartitionSpec(axes), axis_sizes,
                                    what=what)[0]


def _residual_bytes(fn, differentiated: tuple, constant: tuple) -> int:
    """Bytes of what `jax.vjp` of fn(*differentiated, *constant) w.r.t. `differentiated` keeps for
    the backward pass (all arguments abstract)."""

    def residuals(differentiated, constant):
        return jax.vjp(lambda *d: fn(*d, *constant), *differentiated)[1]

    vjp = jax.eval_shape(residuals, differentiated, constant)
    return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(vjp))


def _per_sequence(measure) -> int:
    """measure(batch) at batch 2 minus batch 1: the part that grows with the batch."""
    return measure(2) - measure(1)


def activation_bytes_per_sequence(config: ModelConfig, local: ModelConfig, seq_len: int,
                                  vocab_local: int) -> tuple[dict[str, int], int]:
    """({remat policy: bytes per block}, bytes of the output head), per sequence on one device."""
    dtype = DTYPES[config.dtype]
    block = Block(local)

    def block_measure(policy: str, batch: int) -> int:
        x = jax.ShapeDtypeStruct((batch, seq_len, config.d_model), dtype)
        segments = jax.ShapeDtypeStruct((batch, seq_len), jnp.int32)
        rope = (jax.ShapeDtypeStruct((batch, seq_len, local.resolved_head_dim), jnp.float32)
                if config.preset == "chameleon" else None)
        inputs = BlockInputs(segment_ids=segments, key_segment_ids=segments,
                             query_slots=jax.ShapeDtypeStruct((seq_len,), jnp.int32),
                             rope_cos=rope, rope_sin=rope, cache_index=None)
        params = jax.eval_shape(lambda x, i: nn.meta.unbox(
            block.init(jax.random.key(0), x, i, None)["params"]), x, inputs)

        def apply(params, x, inputs):
            return block.apply({"params": params}, x, inputs, None)[0]

        if policy != "none":
            apply = jax.checkpoint(apply, policy=CHECKPOINT_POLICIES[policy])
        return _residual_bytes(apply, (params, x), (inputs,))

    class OutputHead(nn.Module):
        @nn.compact
        def __call__(self, x, targets):
            x = _norm(local, "final_norm")(x)
            logits = Projection((vocab_local,), ("embed", "vocab"), dtype=dtype)(x)
            return cross_entropy_sums(logits, targets, jnp.ones(targets.shape),
                                      config.z_loss).cross_entropy

    def head_measure(batch: int) -> int:
        x = jax.ShapeDtypeStruct((batch, seq_len, config.d_model), dtype)
        targets = jax.ShapeDtypeStruct((batch, seq_len), jnp.int32)
        head = OutputHead()
        params = jax.eval_shape(lambda x, t: head.init(jax.random.key(0), x, t)["params"], x,
                                targets)
        return _residual_bytes(lambda p, x, t: head.apply({"params": p}, x, t), (params, x),
                               (targets,))

    per_block = {policy: _per_sequence(lambda b, p=policy: block_measure(p, b))
                 for policy in REMAT_POLICIES}
    return per_block, _per_sequence(head_measure)


def attention_bytes_per_sequence(config: ModelConfig, local: ModelConfig,
                                 seq_len: int) -> dict[str, dict[str, Any]]:
    """{implementation: {residuals, scores, total} bytes, or {unsupported: why}} of one layer's
    attention core for one sequence on one device (`local` holds this device's heads)."""
    dtype = DTYPES[config.dtype]
    heads, kv_heads, head_dim = local.num_heads, local.kv_heads, local.resolved_head_dim

    def core(implementation):
        def fn(q, k, v, segments):
            if implementation == "splash":
                return attention_lib.splash_attention_local(q, k, v, segments, segments,
                                                            interpret=True)
            return attention_lib.attention(q, k, v, query_segment_ids=segments,
                                           key_segment_ids=segments, implementation="xla")
        return fn

    def measure(implementation, batch):
        q = jax.ShapeDtypeStruct((batch, seq_len, heads, head_dim), dtype)
        kv = jax.ShapeDtypeStruct((batch, seq_len, kv_heads, head_dim), dtype)
        segments = jax.ShapeDtypeStruct((batch, seq_len), jnp.int32)
        return _residual_bytes(core(implementation), (q, kv, kv), (segments,))

    itemsize = jnp.dtype(dtype).itemsize
    kernel_residuals = (itemsize * seq_len * head_dim * (2 * heads + 2 * kv_heads)
                        + 4 * heads * seq_len + 4 * seq_len)  # q, o, k, v, f32 lse, segment ids
    blocks = attention_lib.causal_query_blocks(seq_len)
    xla_scores = 4 * heads * sum((seq_len // blocks) * (i + 1) * (seq_len // blocks)
                                 for i in range(blocks))
    result = {"xla": {"residuals": _per_sequence(lambda b: measure("xla", b)),
                      "scores": xla_scores}}
    problem = attention_lib.splash_problem(seq_len, seq_len, head_dim)
    if problem:
        result["splash"] = {"unsupported": problem}
    else:
        block = attention_lib.splash_block(seq_len)
        result["splash"] = {"residuals": _per_sequence(lambda b: measure("splash", b)),
                            "scores": 4 * block * block}
    result["cudnn"] = {"residuals": kernel_residuals, "scores": 4 * 128 * 128}
    for entry in result.values():
        if "residuals" in entry:
            entry["total"] = entry["residuals"] + entry["scores"]
    return result


@dataclasses.dataclass(frozen=True)
class Plan:
    num_params: int
    flops_per_token: dict[str, int]
    mesh: dict[str, int]
    batch_size: int
    seq_len: int
    sequences_per_device: int
    bytes_per_device: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def make_plan(config: ModelConfig, mesh: MeshConfig, batch_size: int = 0,
              seq_len: int = 0) -> Plan:
    """The plan for `config` on a mesh of `mesh.shape` (all sizes given, no -1)."""
    axis_sizes = dict(zip(MESH_AXES, mesh.shape))
    rules = mesh.logical_axis_rules()
    seq_len = seq_len or config.max_seq_len
    if seq_len > config.max_seq_len:
        raise ConfigError(f"--seq_len={seq_len} exceeds config.model.max_seq_len="
                          f"{config.max_seq_len}")
    batch_size = batch_size or sharding_lib.batch_shards(axis_sizes, rules)
    per_device_batch = sharding_lib.sequences_per_shard(batch_size, axis_sizes, rules)

    boxed = accounting.abstract_params(config)
    params = nn.meta.unbox(boxed)
    specs = sharding_lib.logical_specs(boxed)
    param_elements = local_elements = 0
    for (path, leaf), spec in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                                  jax.tree.leaves(specs, is_leaf=lambda x: isinstance(
                                      x, jax.sharding.PartitionSpec))):
        mesh_spec = nn.logical_to_mesh_axes(tuple(spec), rules)
        what = "parameter " + "/".join(str(getattr(k, "key", k)) for k in path)
        param_elements += math.prod(leaf.shape)
        local_elements += math.prod(sharding_lib.local_shape(leaf.shape, mesh_spec, axis_sizes,
                                                             what=what))
    param_bytes = jnp.dtype(DTYPES[config.param_dtype]).itemsize

    local = dataclasses.replace(
        config, num_heads=_split(config.num_heads, "heads", rules, axis_sizes, "model.num_heads"),
        num_kv_heads=_split(config.kv_heads, "kv_heads", rules, axis_sizes, "model.num_kv_heads"),
        head_dim=config.resolved_head_dim,
        mlp_dim=_split(config.hidden_dim, "mlp", rules, axis_sizes, "model.mlp_dim"),
        scan_layers=False, remat="none")
    local_seq = _split(seq_len, "length", rules, axis_sizes, "seq_len")
    vocab_local = _split(config.vocab_size, "vocab", rules, axis_sizes, "model.vocab_size")
    per_block, head = activation_bytes_per_sequence(config, local, local_seq, vocab_local)
    per_layer = {policy: per_device_batch * value for policy, value in per_block.items()}
    attention = {
        name: {key: per_device_batch * value if isinstance(value, int) else value
               for key, value in entry.items()}
        for name, entry in attention_bytes_per_sequence(config, local, local_seq).items()}
    activations = config.num_layers * per_layer[config.remat] + per_device_batch * head
    memory = {
        "params": local_elements * param_bytes,
        "gradients": local_elements * param_bytes,
        "optimizer": local_elements * ADAMW_MOMENT_BYTES,
        "activations_per_layer": per_layer,
        "activations_output_head": per_device_batch * head,
        "attention_per_layer": attention,
        "attention": config.attention,
        "activations": activations,
        "remat": config.remat,
    }
    memory["total"] = (memory["params"] + memory["gradients"] + memory["optimizer"]
                       + activations)
    lookup = accounting.lookup_only_params(config, params)
    return Plan(num_params=param_elements,
                flops_per_token=accounting.flops_per_token(config, param_elements, lookup, seq_len),
                mesh=axis_sizes, batch_size=batch_size, seq_len=seq_len,
                sequences_per_device=per_device_batch, bytes_per_device=memory)


def _gib(num_bytes: int) -> str:
    return f"{num_bytes / 2**30:,.3f} GiB ({num_bytes:,} B)"


def format_plan(config: ModelConfig, plan: Plan) -> str:
    memory = plan.bytes_per_device
    flops = plan.flops_per_token
    mesh = " x ".join(f"{k}={v}" for k, v in plan.mesh.items())
    lines = [
        f"model: {config.preset}, {config.num_layers} layers, d_model {config.d_model}, "
        f"{config.num_heads} heads ({config.kv_heads} kv), mlp {config.hidden_dim}, "
        f"vocab {config.vocab_size}, tied={config.tie_embeddings}",
        f"parameters: {plan.num_params:,}",
        f"FLOPs per token (seq_len {plan.seq_len}): {flops['total']:,} = 6N {flops['matmul_6n']:,}"
        f" + attention {flops['attention']:,}",
        f"FLOPs per step (batch {plan.batch_size}): "
        f"{flops['total'] * plan.batch_size * plan.seq_len:.4e}",
        f"mesh: {mesh} ({math.prod(plan.mesh.values())} devices), "
        f"{plan.sequences_per_device} sequence(s) per device",
        "per device:",
        f"  params ({config.param_dtype}):    {_gib(memory['params'])}",
        f"  gradients ({config.param_dtype}): {_gib(memory['gradients'])}",
        f"  AdamW moments (2 x f32): {_gib(memory['optimizer'])}",
        "  activations per layer, by remat policy:",
        *[f"    {policy:<34} {_gib(value)}"
          for policy, value in memory["activations_per_layer"].items()],
        f"  activations of the output head: {_gib(memory['activations_output_head'])}",
        f"  attention core per layer, by implementation (configured: {memory['attention']}):",
        *[f"    {name:<7} " + (f"cannot run: {entry['unsupported']}" if "unsupported" in entry
                               else f"{_gib(entry['total'])} = residuals "
                                    f"{_gib(entry['residuals'])} + scores {_gib(entry['scores'])}")
          for name, entry in memory["attention_per_layer"].items()],
        f"  activations total (remat={memory['remat']}): {_gib(memory['activations'])}",
        f"  total: {_gib(memory['total'])}",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Does a config fit a machine, and if not, what would: `python -m cm3leon_jax.plan --machine`
# --------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Machine:
    """A slice or host: JAX devices, nominal HBM per device, the platform its programs target."""
    name: str
    devices: int
    hbm_gib: float
    platform: str  # a jax.export platform name

    @property
    def backend(self) -> str:
        """Its `jax.default_backend()` name: cpu, gpu, tpu."""
        return platform.EXPORT_PLATFORMS[self.platform]

    @property
    def budget(self) -> int:
        """Bytes a plan may use per device: HBM less the headroom."""
        return int(self.hbm_gib * 2**30 * (1 - HEADROOM))


# JAX devices: a v5e chip is one device, a v5p chip's two TensorCores one megacore device
# (v5p-128 = 64 chips), an H100 one device.
MACHINES = {machine.name: machine for machine in (
    Machine("v5e-256", 256, 16, "tpu"), Machine("v5p-128", 64, 95, "tpu"),
    Machine("8xh100", 8, 80, "cuda"))}
# Left free for what no figure here counts: fragmentation, the runtime's own buffers, the
# difference between a plan's estimate and the target compiler's buffer assignment.
HEADROOM = 0.10
# Remat policies from the most memory kept to the least (`full` keeps only each block's input).
REMAT_BY_MEMORY = ("none", "dots_saveable", "dots_with_no_batch_dims_saveable", "full")
TENSOR_DEGREES = (2, 4)


def find_machine(name: str) -> Machine:
    if name.lower() not in MACHINES:
        raise ConfigError(f"--machine={name!r}: unknown; one of {', '.join(MACHINES)}")
    return MACHINES[name.lower()]


@dataclasses.dataclass(frozen=True)
class Setting:
    """What the fit search varies: the remat policy, micro-batches per step, tensor degree
    (fsdp takes the machine's other devices, data=1)."""
    remat: str
    micro_batches: int
    tensor: int

    def mesh(self, base: MeshConfig, machine: Machine) -> MeshConfig:
        return dataclasses.replace(base, data=1, fsdp=machine.devices // self.tensor,
                                   tensor=self.tensor)

    def sequences_per_device(self, batch_size: int, machine: Machine) -> int:
        return batch_size // self.micro_batches // (machine.devices // self.tensor)

    def describe(self, batch_size: int, machine: Machine) -> str:
        return (f"remat={self.remat}, micro_batches={self.micro_batches}, tensor={self.tensor} "
                f"({self.sequences_per_device(batch_size, machine)} sequence(s) per device)")


def settings_to_try(configured: Setting, batch_size: int, machine: Machine) -> list[Setting]:
    """The settings after `configured`, in the order the search tries them: each stronger remat
    policy; then, at the strongest, more micro-batches (fewer sequences per device) down to one
    sequence per batch shard; then tensor parallelism 2, 4 from the configured micro-batches."""

    def runnable(setting: Setting) -> bool:
        shards = machine.devices // setting.tensor
        return (machine.devices % setting.tensor == 0 and batch_size % setting.micro_batches == 0
                and (batch_size // setting.micro_batches) % shards == 0)

    def more_micro_batches(remat: str, tensor: int) -> list[Setting]:
        counts = range(configured.micro_batches, batch_size + 1)
        return [setting for setting in (Setting(remat, k, tensor) for k in counts)
                if runnable(setting)]

    stronger = REMAT_BY_MEMORY[REMAT_BY_MEMORY.index(configured.remat) + 1:]
    remat = REMAT_BY_MEMORY[-1]
    settings = [Setting(policy, configured.micro_batches, 1) for policy in stronger]
    settings += [setting for setting in more_micro_batches(remat, 1)
                 if setting.micro_batches > configured.micro_batches]
    for tensor in TENSOR_DEGREES:
        settings += more_micro_batches(remat, tensor)
    return [setting for setting in settings if setting != configured]


def arithmetic_footprint(config: ModelConfig, mesh: MeshConfig, setting: Setting,
                         micro_batch: int, seq_len: int, backend: str) -> dict[str, int]:
    """Per-device bytes of `setting` from `make_plan` (see the module docstring): params,
    gradients (two buffers with micro-batches: the running sum and the micro-batch's), AdamW
    moments, activations kept under the remat policy, and temporaries: the rest of one block's
    activations, which the backward pass recomputes and holds for the block it is on, plus one
    copy of the score tiles of the attention implementation `backend` runs."""
    plan = make_plan(dataclasses.replace(config, remat=setting.remat), mesh, micro_batch, seq_len)
    memory = plan.bytes_per_device
    per_layer = memory["activations_per_layer"]
    attention = attention_lib.select_implementation(
        config.attention, q_len=seq_len, kv_len=seq_len, head_dim=config.resolved_head_dim,
        dtype=DTYPES[config.dtype], backend=backend)
    figures = {"params": memory["params"],
               "gradients": memory["gradients"] * (2 if setting.micro_batches > 1 else 1),
               "optimizer": memory["optimizer"], "activations": memory["activations"],
               "temporaries": per_layer["none"] - per_layer[setting.remat]
               + memory["attention_per_layer"][attention]["scores"]}
    figures["total"] = sum(figures.values())
    return figures


@dataclasses.dataclass
class Fit:
    """The configured setting's footprint, and the first setting that fits when it does not."""
    machine: Machine
    batch_size: int
    source: str
    tried: list[tuple[Setting, dict[str, int]]]

    @property
    def fits(self) -> bool:
        return self.tried[0][1]["total"] <= self.machine.budget

    @property
    def found(self) -> Optional[tuple[Setting, dict[str, int]]]:
        """(setting, footprint) of the first setting within budget, or None."""
        return next(((s, f) for s, f in self.tried if f["total"] <= self.machine.budget), None)

    def verdict(self) -> str:
        total = self.tried[0][1]["total"]
        budget = (f"{self.machine.budget / 2**30:.2f} GiB ({100 - round(100 * HEADROOM)}% of "
                  f"{self.machine.hbm_gib:g} GiB HBM)")
        if self.fits:
            return f"fits: {total / 2**30:.2f} GiB of {budget}"
        line = f"does not fit: {total / 2**30:.2f} GiB of {budget}; "
        if self.found is None:
            return line + "no setting tried fits (remat, micro-batches, tensor 2/4)"
        setting, figures = self.found
        return (line + f"would fit with {setting.describe(self.batch_size, self.machine)} "
                f"({figures['total'] / 2**30:.2f} GiB)")

    def to_json(self) -> dict[str, Any]:
        return {"machine": dataclasses.asdict(self.machine), "budget": self.machine.budget,
                "source": self.source, "fits": self.fits, "verdict": self.verdict(),
                "tried": [{**dataclasses.asdict(s), "bytes": f} for s, f in self.tried]}


def with_setting(cfg: ml_collections.ConfigDict, setting: Setting) -> ml_collections.ConfigDict:
    """A copy of `cfg` with the setting's remat policy and micro-batches."""
    cfg = cfg.copy_and_resolve_references()
    cfg.model.remat = setting.remat
    cfg.train.micro_batches = setting.micro_batches
    return cfg


def exported_state_bytes(cfg: ml_collections.ConfigDict, machine: Machine, mesh: MeshConfig,
                         batch_size: int, seq_len: int) -> dict[str, int]:
    """Per-device bytes of the train state's parts as the train step exported for the machine's
    platform lays them out (`lowering.state_bytes_per_device`); needs the mesh's devices."""
    exported = lowering.export_train_step(cfg, machine.platform, mesh, batch_size=batch_size,
                                          seq_len=seq_len)
    return lowering.state_bytes_per_device(exported, mesh)


def compiled_footprint(cfg: ml_collections.ConfigDict, mesh: MeshConfig, setting: Setting,
                       batch_size: int, seq_len: int) -> dict[str, int]:
    """Per-device bytes from the memory analysis of the train step compiled for this process's
    backend (`lowering.compile_train_step`): arguments (train state and batch shards), outputs
    not aliased to a donated argument, and temporaries (everything else live at once at the
    step's peak as the compiler assigns buffers: gradients, activations, recomputation)."""
    stats = lowering.compile_train_step(with_setting(cfg, setting), mesh, batch_size=batch_size,
                                        seq_len=seq_len).memory_analysis()
    figures = {"arguments": stats.argument_size_in_bytes,
               "outputs": stats.output_size_in_bytes - stats.alias_size_in_bytes,
               "temporaries": stats.temp_size_in_bytes}
    figures["total"] = sum(figures.values())
    return figures


def search_fit(machine: Machine, configured: Setting, batch_size: int, source: str,
               footprint) -> Fit:
    """`footprint(setting)` of the configured setting, then of `settings_to_try` in order until
    one is within the machine's budget."""
    fit = Fit(machine, batch_size, source, [(configured, footprint(configured))])
    if not fit.fits:
        for setting in settings_to_try(configured, batch_size, machine):
            fit.tried.append((setting, footprint(setting)))
            if fit.tried[-1][1]["total"] <= machine.budget:
                break
    return fit


def format_fit(fit: Fit) -> str:
    lines = [f"{fit.machine.name} ({fit.machine.devices} devices), per device, {fit.source}:"]
    for setting, figures in fit.tried:
        lines.append(f"  {setting.describe(fit.batch_size, fit.machine)}: " + ", ".join(
            f"{name} {value / 2**30:.2f}" for name, value in figures.items()) + " GiB")
    lines.append("  " + fit.verdict())
    return "\n".join(lines)
