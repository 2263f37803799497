"""The device mesh and where every array lives on it.

Three named axes: 'data' (pure data parallelism), 'fsdp' (data parallelism whose parameters are
also sharded), 'model' (tensor parallelism). The batch is split over ('data', 'fsdp'); parameters
follow a family's regex rules over dotted paths. Rules are checked when they are applied: an
unmatched parameter, a rule matching nothing and a dimension the mesh axis does not divide are
errors with the numbers in them. LoRA factors take their shardings from the base kernels
(`lora_jax.lora.shardings`), so they need no rules of their own.
"""

import math
import re
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from lora_jax import errors, tree_paths
from lora_jax.train.config import MeshConfig

AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")


class ShardingError(errors.UserError):
  """Partition rules or a mesh that do not fit the arrays."""


def axis_sizes(config: MeshConfig, n_devices: int) -> tuple[int, int, int]:
  """(data, fsdp, model) with a -1 resolved to the devices left over."""
  sizes = [config.data, config.fsdp, config.model]
  free = [i for i, s in enumerate(sizes) if s == -1]
  if len(free) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ShardingError(f"mesh (data {config.data}, fsdp {config.fsdp}, model {config.model}): "
                        f"sizes are >= 1 and at most one is -1")
  fixed = math.prod(s for s in sizes if s != -1)
  if free:
    if n_devices % fixed:
      raise ShardingError(f"mesh axes of fixed size {fixed} do not divide {n_devices} devices")
    sizes[free[0]] = n_devices // fixed
  if math.prod(sizes) != n_devices:
    raise ShardingError(f"mesh (data {sizes[0]}, fsdp {sizes[1]}, model {sizes[2]}) needs "
                        f"{math.prod(sizes)} devices, there are {n_devices}")
  return tuple(sizes)


def make_mesh(config: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The ('data', 'fsdp', 'model') mesh over `devices` (default: all)."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = axis_sizes(config, len(devices))
  # Auto axes: shardings are placed by jit's in/out shardings and propagated by the compiler.
  return jax.make_mesh(sizes, AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices)


def data_parallel_size(mesh: Mesh) -> int:
  """Devices the batch is split over."""
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def check_batch_size(batch_size: int, mesh: Mesh, what: str) -> None:
  """Raise unless `batch_size` splits evenly over the data-parallel devices."""
  n = data_parallel_size(mesh)
  if batch_size < 1 or batch_size % n:
    raise ShardingError(f"{what} {batch_size} is not divisible by {n} data-parallel devices "
                        f"(data {mesh.shape['data']} x fsdp {mesh.shape['fsdp']})")


def batch_sharding(mesh: Mesh, leading: int = 0) -> NamedSharding:
  """Batch arrays split on their batch axis, after `leading` unsplit axes (e.g. micro-batches)."""
  return NamedSharding(mesh, PartitionSpec(*([None] * leading), BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def _axis_names(entry) -> tuple[str, ...]:
  if entry is None:
    return ()
  return tuple(entry) if isinstance(entry, tuple) else (entry,)


def _check_fits(path: str, shape: tuple[int, ...], spec: PartitionSpec, rule: str,
                mesh_shape: dict[str, int]) -> None:
  if len(spec) > len(shape):
    raise ShardingError(f"rule {rule!r} gives {path} {len(spec)}-D spec {spec} but it is "
                        f"{len(shape)}-D {shape}")
  for dim, entry in enumerate(spec):
    names = _axis_names(entry)
    unknown = [n for n in names if n not in mesh_shape]
    if unknown:
      raise ShardingError(f"rule {rule!r} names mesh axes {unknown}; the axes are {AXES}")
    size = math.prod(mesh_shape[n] for n in names)
    if shape[dim] % size:
      raise ShardingError(f"{path} dim {dim} of size {shape[dim]} is not divisible by mesh axis "
                          f"{'x'.join(names)} of size {size} (rule {rule!r}, shape {shape})")


def partition_specs(rules: Sequence[tuple[str, PartitionSpec]], abstract: Any,
                    mesh_shape: dict[str, int]) -> Any:
  """PartitionSpecs for every leaf of `abstract` from the first rule that searches its path."""
  try:
    compiled = [(re.compile(r), spec) for r, spec in rules]
  except re.error as e:
    raise ShardingError(f"bad regex in partition rules: {e}") from e
  used = set()
  unmatched = []

  def one(keys: tuple[str, ...], leaf) -> PartitionSpec:
    path = tree_paths.dotted(keys)
    for i, (pattern, spec) in enumerate(compiled):
      if pattern.search(path):
        used.add(i)
        _check_fits(path, tuple(leaf.shape), spec, pattern.pattern, mesh_shape)
        return spec
    unmatched.append(path)
    return PartitionSpec()

  flat = {keys: one(keys, leaf) for keys, leaf in tree_paths.flatten(abstract).items()}
  if unmatched:
    raise ShardingError(f"{len(unmatched)} parameters match no partition rule (add a catch-all "
                        f"('.*', PartitionSpec())): {', '.join(unmatched[:6])}")
  unused = [rules[i][0] for i in range(len(rules)) if i not in used]
  if unused:
    raise ShardingError(f"partition rules {unused} match no parameter")
  return _like(abstract, flat)


def _like(tree: Any, flat: dict[tuple[str, ...], Any]) -> Any:
  """`flat`'s values in the structure of `tree` (whose leaves `flat` is keyed by)."""
  paths = [tuple(tree_paths.key_name(k) for k in p)
           for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
  return jax.tree.unflatten(jax.tree.structure(tree), [flat[p] for p in paths])


def param_shardings(rules: Sequence[tuple[str, PartitionSpec]], abstract: Any, mesh: Mesh) -> Any:
  """NamedShardings for a parameter tree from partition rules."""
  specs = partition_specs(rules, abstract, dict(mesh.shape))
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                      is_leaf=lambda x: isinstance(x, PartitionSpec))


def like_params(abstract_tree: Any, abstract_params: Any, param_shardings_: Any,
                mesh: Mesh) -> Any:
  """Shardings for a tree that holds copies of the parameter tree (optimiser moments).

  A leaf whose key path ends with a parameter's key path and has its shape takes that parameter's
  sharding; other leaves must be scalars (counts, scales) and are replicated.
  """
  params = {keys: (tuple(leaf.shape), s) for (keys, leaf), s in zip(
      tree_paths.flatten(abstract_params).items(), jax.tree.leaves(param_shardings_))}
  depth = max((len(k) for k in params), default=0)

  def one(path, leaf):
    keys = tuple(tree_paths.key_name(k) for k in path)
    for n in range(min(depth, len(keys)), 0, -1):
      hit = params.get(keys[-n:])
      if hit is not None and hit[0] == tuple(leaf.shape):
        return hit[1]
    if np.ndim(leaf) and math.prod(leaf.shape) > 1:
      raise ShardingError(f"state leaf {'/'.join(keys)} {tuple(leaf.shape)} is no parameter's "
                          f"copy; refusing to replicate it silently")
    return replicated(mesh)

  return jax.tree_util.tree_map_with_path(one, abstract_tree)
