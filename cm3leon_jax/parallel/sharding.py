"""Logical axis names -> mesh shardings, with one rule table (`config.MeshConfig.rules`).

Weights carry logical names from their initialisers (`nn.with_logical_partitioning` in
`models/layers.py`); `nn.get_partition_spec` reads them off an abstract (eval_shape) tree and
`logical_shardings` turns them into `NamedSharding`s through the rules. Activation hints
(`models.layers.constrain`) use the same rules, which must be active while a function is traced:
`sharding_context(mesh, rules)` sets both the mesh and the rules, and `ShardedFunction` enters it
around every call of a jitted function.

Uneven splits are refused up front (`check_divisible`): a weight dimension or a batch that a mesh
axis does not divide fails with the array, its size, the mesh axes and their size, instead of an
XLA error after compilation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Callable, Iterator, Mapping

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

Rules = tuple[tuple[str, Any], ...]
BATCH_AXES = ("batch", "length")


@contextlib.contextmanager
def sharding_context(mesh: Mesh, rules: Rules) -> Iterator[None]:
    """Mesh + logical axis rules for tracing: activation constraints resolve inside it."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


def logical_specs(boxed_tree: Any) -> Any:
    """PartitionSpecs of logical names for a tree holding `nn.LogicallyPartitioned` leaves
    (unannotated leaves, e.g. optimizer step counts, get an empty spec: replicated)."""
    return nn.get_partition_spec(boxed_tree)


def logical_shardings(specs: Any, mesh: Mesh, rules: Rules) -> Any:
    """NamedShardings for a tree of logical PartitionSpecs."""
    return nn.logical_to_mesh_sharding(specs, mesh, rules)


def _path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                    for k in path)


def local_shape(shape: tuple[int, ...], spec: PartitionSpec, axis_sizes: Mapping[str, int],
                what: str = "array") -> tuple[int, ...]:
    """The shape of one device's shard of an array of `shape` laid out by `spec` on a mesh with
    `axis_sizes`; ValueError (naming `what`, the sizes and the axes) when a split is uneven."""
    local = []
    for dim, size in enumerate(shape):
        axes = spec[dim] if dim < len(spec) else None
        names = () if axes is None else axes if isinstance(axes, tuple) else (axes,)
        devices = math.prod(axis_sizes[name] for name in names)
        if size % devices:
            raise ValueError(
                f"{what} {tuple(shape)}: dimension {dim} has size {size}, which mesh axes {axes} "
                f"(size {devices}) do not divide; change the model size, the mesh shape or "
                f"config.mesh.rules")
        local.append(size // devices)
    return tuple(local)


def check_divisible(abstract_tree: Any, shardings: Any, what: str = "parameter") -> None:
    """Raises ValueError for the first array dimension its sharding's mesh axes do not divide."""
    arrays = jax.tree_util.tree_flatten_with_path(abstract_tree)[0]
    sharding_leaves = jax.tree.leaves(shardings,
                                      is_leaf=lambda x: isinstance(x, NamedSharding))
    for (path, array), sharding in zip(arrays, sharding_leaves):
        local_shape(array.shape, sharding.spec, dict(sharding.mesh.shape),
                    what=f"{what} {_path_str(path)}")


def batch_sharding(mesh: Mesh, rules: Rules) -> NamedSharding:
    """Sharding of a [batch, length] input array (tokens, segment ids, weights, positions)."""
    return NamedSharding(mesh, nn.logical_to_mesh_axes(BATCH_AXES, rules))


def batch_shards(axis_sizes: Mapping[str, int], rules: Rules) -> int:
    """Number of shards the `batch` rule splits a global batch into."""
    axes = nn.logical_to_mesh_axes(BATCH_AXES, rules)[0]
    names = () if axes is None else axes if isinstance(axes, tuple) else (axes,)
    return math.prod(axis_sizes[name] for name in names)


def sequences_per_shard(batch_size: int, axis_sizes: Mapping[str, int], rules: Rules) -> int:
    """Sequences per batch shard of a global batch on a mesh of `axis_sizes` (`dict(mesh.shape)`);
    ValueError when the `batch` rule's axes do not divide it."""
    shards = batch_shards(axis_sizes, rules)
    if batch_size % shards:
        axes = nn.logical_to_mesh_axes(BATCH_AXES, rules)[0]
        raise ValueError(f"global batch size {batch_size} is not divisible by mesh axes {axes} "
                         f"of size {shards} that the `batch` rule shards it over")
    return batch_size // shards


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


@dataclasses.dataclass(frozen=True)
class ShardedFunction:
    """A jitted function plus the mesh and rules it must be traced under.

    `__call__` and `lower` enter `sharding_context`, so callers never have to remember it.
    """

    jitted: Callable
    mesh: Mesh
    rules: Rules

    def __call__(self, *args, **kwargs):
        with sharding_context(self.mesh, self.rules):
            return self.jitted(*args, **kwargs)

    def lower(self, *args, **kwargs):
        with sharding_context(self.mesh, self.rules):
            return self.jitted.lower(*args, **kwargs)
