"""The device mesh, axes (data, fsdp, tensor), built from `config.MeshConfig`.

Axis types are passed deliberately as `Auto`: since jax 0.7 `jax.make_mesh` defaults to
`Explicit` axes (sharding in types, every op must agree), while this code base shards the way
MaxText does: jit with in/out shardings plus `with_sharding_constraint` hints, and lets the XLA
partitioner (GSPMD / Shardy) propagate the rest. That is the `Auto` mode.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import jax
from jax.sharding import AxisType, Mesh

from cm3leon_jax.config import MESH_AXES, MeshConfig


def resolve_mesh_shape(mesh_config: MeshConfig, num_devices: int) -> tuple[int, int, int]:
    """(data, fsdp, tensor) with a -1 replaced by what the other axes leave of `num_devices`.

    Raises ValueError naming the mesh product and the device count when they cannot match.
    """
    shape = list(mesh_config.shape)
    described = " x ".join(f"{name}={size}" for name, size in zip(MESH_AXES, shape))
    fixed = math.prod(size for size in shape if size != -1)
    if -1 in shape:
        if num_devices % fixed:
            raise ValueError(f"mesh {described}: the fixed axes multiply to {fixed}, which does "
                             f"not divide the {num_devices} available devices")
        shape[shape.index(-1)] = num_devices // fixed
    elif fixed != num_devices:
        raise ValueError(f"mesh {described} needs {fixed} devices, but {num_devices} devices "
                         f"are available (set one axis to -1 to use the rest)")
    return tuple(shape)


def make_mesh(mesh_config: MeshConfig,
              devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A Mesh over `devices` (default: all of them) with Auto axes named data, fsdp, tensor."""
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(mesh_config, len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                         devices=devices)
