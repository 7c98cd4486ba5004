r"""Plan a run before buying it: parameters, FLOPs per token and per-device memory on a mesh, and
whether a config fits a machine (and if not, the first setting that would).

    python -m cm3leon_jax.plan --config experiments/cm3leon_350m.py \
        --mesh data=2,fsdp=4,tensor=1 --batch_size 16
    python -m cm3leon_jax.plan --config experiments/cm3leon_7b.py --machine 8xh100 [--lowered]

Pure arithmetic on `jax.eval_shape` shapes: nothing is allocated and the mesh need not exist (a
mesh of 512 devices plans fine on a laptop). `--lowered` adds the figures of the real train step:
exported for the machine's platform and compiled for this process's backend, on the machine's
device count (fake CPU devices: the command reruns itself in a subprocess with
`--xla_force_host_platform_device_count`). What each figure means: `parallel/memory_plan.py`.
"""


from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from typing import Any, Optional

from absl import flags
import jax
import ml_collections

from cm3leon_jax import cli
from cm3leon_jax.config import (MESH_AXES, ConfigError, ModelConfig, MeshConfig, mesh_config,
                                model_config, train_config)
from cm3leon_jax.parallel import mesh as mesh_lib
from cm3leon_jax.parallel.memory_plan import (
    MACHINES, Machine, Setting, arithmetic_footprint, compiled_footprint, exported_state_bytes,
    find_machine, format_fit, format_plan, make_plan, parse_mesh, search_fit)

FLAGS = flags.FLAGS
flags.DEFINE_string("mesh", "", "Mesh to plan for, e.g. data=2,fsdp=4,tensor=1 (axes left "
                    "out are 1). Default: config.mesh, -1 resolved to this host's devices.")
flags.DEFINE_integer("batch_size", 0, "Global batch in sequences; 0 = one sequence per "
                     "batch shard.")
flags.DEFINE_integer("seq_len", 0, "Training sequence length; 0 = model.max_seq_len.")
flags.DEFINE_string("machine", "", f"Plan for a machine ({', '.join(MACHINES)}): the config's "
                    "micro-batch (train.batch_size / train.micro_batches) on data=1 x fsdp=every "
                    "device x the config's tensor degree; says whether it fits the HBM and, if "
                    "not, the first stronger remat, more micro-batches or tensor degree that would.")
flags.DEFINE_bool("lowered", False, "With --machine: also the train state's per-device bytes "
                  "read from the train step exported for the machine's platform, and the fit "
                  "judged by the compiled step's memory analysis (this backend's compiler).")
flags.DEFINE_string("json_out", "", "Also write the plan as JSON to this path.")

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def _rerun_with_devices(devices: int) -> None:
    """This command again in a subprocess that sees `devices` fake CPU devices."""
    flags_now = os.environ.get("XLA_FLAGS", "")
    if f"{DEVICE_COUNT_FLAG}={devices}" in flags_now:
        raise ConfigError(f"XLA_FLAGS asks for {devices} CPU devices but JAX sees "
                          f"{jax.device_count()}")
    kept = re.sub(rf"{DEVICE_COUNT_FLAG}=\d+", "", flags_now).strip()
    env = {**os.environ, "XLA_FLAGS": f"{kept} {DEVICE_COUNT_FLAG}={devices}".strip()}
    sys.exit(subprocess.run([sys.executable, "-m", "cm3leon_jax.plan", *sys.argv[1:]],
                            env=env, check=False).returncode)


def _plan_machine(cfg: ml_collections.ConfigDict, model: ModelConfig, base_mesh: MeshConfig,
                  machine: Machine) -> dict[str, Any]:
    """Prints the configured setting's plan on `machine` and the fit search; returns the JSON."""
    if FLAGS.mesh or FLAGS.batch_size:
        raise ConfigError("--machine sets the mesh (data=1, fsdp=the rest) and the micro-batch "
                          "(train.batch_size / train.micro_batches): give --config.train.* or "
                          "--config.mesh.tensor instead of --mesh / --batch_size")
    train = train_config(cfg)
    seq_len = FLAGS.seq_len or model.max_seq_len
    configured = Setting(model.remat, train.micro_batches, max(base_mesh.tensor, 1))
    mesh = configured.mesh(base_mesh, machine)
    if machine.devices % configured.tensor:
        raise ConfigError(f"config.mesh.tensor={configured.tensor} does not divide "
                          f"{machine.name}'s {machine.devices} devices")
    micro_batch = train.batch_size // train.micro_batches
    shards = machine.devices // configured.tensor
    if micro_batch % shards:
        raise ConfigError(f"{machine.name}: a micro-batch of {micro_batch} sequences "
                          f"(train.batch_size / train.micro_batches) does not split over its "
                          f"{shards} batch shards; make it a multiple of {shards}")
    if FLAGS.lowered and jax.device_count() != machine.devices:
        if jax.default_backend() != "cpu":
            raise ConfigError(f"--lowered on {jax.default_backend()} needs {machine.name}'s "
                              f"{machine.devices} devices; this host has {jax.device_count()}")
        _rerun_with_devices(machine.devices)
    plan = make_plan(model, mesh, micro_batch, seq_len)
    print(format_plan(model, plan))
    fit = search_fit(machine, configured, train.batch_size, "arithmetic (make_plan)",
                     lambda s: arithmetic_footprint(model, s.mesh(base_mesh, machine), s,
                                                    train.batch_size // s.micro_batches,
                                                    seq_len, machine.backend))
    print(format_fit(fit))
    result = {"plan": plan.to_json(), "fit": fit.to_json()}
    if FLAGS.lowered:
        state = exported_state_bytes(cfg, machine, mesh, train.batch_size, seq_len)
        planned = plan.bytes_per_device
        print(f"train step exported for {machine.platform}, per device: params "
              f"{state['params']:,} B (plan: {planned['params']:,}), optimizer state "
              f"{state['opt_state']:,} B (plan: {planned['optimizer']:,})")
        backend = jax.default_backend()
        source = f"compiled memory analysis (XLA:{backend.upper()}"
        source += ", the target's own)" if backend == machine.backend \
            else f", this host's estimate of {machine.platform}'s)"
        compiled = search_fit(machine, configured, train.batch_size, source,
                              lambda s: compiled_footprint(cfg, s.mesh(base_mesh, machine), s,
                                                           train.batch_size, seq_len))
        print(format_fit(compiled))
        result.update(exported_state=state, compiled_fit=compiled.to_json())
    return result


def main(cfg: ml_collections.ConfigDict, workdir: Optional[str]) -> None:
    del workdir
    model = model_config(cfg)
    base_mesh = mesh_config(cfg)
    try:
        if FLAGS.machine:
            result = _plan_machine(cfg, model, base_mesh, find_machine(FLAGS.machine))
        elif FLAGS.lowered:
            raise ConfigError("--lowered needs --machine")
        else:
            if FLAGS.mesh:
                mesh = parse_mesh(FLAGS.mesh, base_mesh)
            else:
                shape = mesh_lib.resolve_mesh_shape(base_mesh, jax.device_count())
                mesh = dataclasses.replace(base_mesh, **dict(zip(MESH_AXES, shape)))
            plan = make_plan(model, mesh, FLAGS.batch_size, FLAGS.seq_len)
            print(format_plan(model, plan))
            result = plan.to_json()
    except ValueError as error:
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(str(error)) from error
    if FLAGS.json_out:
        with open(FLAGS.json_out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    cli.run(main, require_workdir=False)
