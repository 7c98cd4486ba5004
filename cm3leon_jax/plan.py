r"""Plan a run before buying it: parameters, FLOPs per token and per-device memory on a mesh.

    python -m cm3leon_jax.plan --config experiments/cm3leon_350m.py \
        --mesh data=2,fsdp=4,tensor=1 --batch_size 16

Pure arithmetic on `jax.eval_shape` shapes: nothing is allocated and the mesh need not exist (a
mesh of 512 devices plans fine on a laptop). What each figure means: `parallel/memory_plan.py`.
"""


from __future__ import annotations

import dataclasses
import json
from typing import Optional

from absl import flags
import jax
import ml_collections

from cm3leon_jax import cli
from cm3leon_jax.config import MESH_AXES, ConfigError, mesh_config, model_config
from cm3leon_jax.parallel import mesh as mesh_lib
from cm3leon_jax.parallel.memory_plan import format_plan, make_plan, parse_mesh

FLAGS = flags.FLAGS
flags.DEFINE_string("mesh", "", "Mesh to plan for, e.g. data=2,fsdp=4,tensor=1 (axes left "
                    "out are 1). Default: config.mesh, -1 resolved to this host's devices.")
flags.DEFINE_integer("batch_size", 0, "Global batch in sequences; 0 = one sequence per "
                     "batch shard.")
flags.DEFINE_integer("seq_len", 0, "Training sequence length; 0 = model.max_seq_len.")
flags.DEFINE_string("json_out", "", "Also write the plan as JSON to this path.")


def main(cfg: ml_collections.ConfigDict, workdir: Optional[str]) -> None:
    del workdir
    model = model_config(cfg)
    base_mesh = mesh_config(cfg)
    try:
        if FLAGS.mesh:
            mesh = parse_mesh(FLAGS.mesh, base_mesh)
        else:
            shape = mesh_lib.resolve_mesh_shape(base_mesh, jax.device_count())
            mesh = dataclasses.replace(base_mesh, **dict(zip(MESH_AXES, shape)))
        plan = make_plan(model, mesh, FLAGS.batch_size, FLAGS.seq_len)
    except ValueError as error:
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(str(error)) from error
    print(format_plan(model, plan))
    if FLAGS.json_out:
        with open(FLAGS.json_out, "w") as f:
            json.dump(plan.to_json(), f, indent=2)


if __name__ == "__main__":
    cli.run(main, require_workdir=False)
