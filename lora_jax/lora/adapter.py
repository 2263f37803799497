"""An adapter as a pytree of its own, beside (never inside) the frozen base tree.

`Adapter.params` mirrors the base tree's module nesting, with `{'lora_A': [in, r], 'lora_B': [r, out]}`
at each adapted module, so `params['blocks_0']['attn']['q_proj']['lora_A']`; a DoRA module also has
`'lora_magnitude': [out]` (see `lora_jax.lora.dora`), which trains with the factors.
`Adapter.scales` has the same nesting with one float32 scalar (alpha/r) per module: scales are
data, so a new alpha does not recompile anything that takes an adapter.

Shardings follow the base weight (as Qwix does): A takes the kernel's input-dim sharding, B (and a
DoRA magnitude) its output-dim sharding, and the rank axis is never sharded.
"""

import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from lora_jax import tree_paths
from lora_jax.lora import dora
from lora_jax.lora.spec import LoraSpec, Target

MAGNITUDE = "lora_magnitude"


@flax.struct.dataclass
class Adapter:
  """LoRA factors and per-module scales; a pytree."""

  params: Any
  scales: Any

  def modules(self) -> dict[tuple[str, ...], tuple[jax.Array, jax.Array, jax.Array]]:
    """{Flax module keys: (A, B, scale)}."""
    flat = tree_paths.flatten(self.params)
    scales = tree_paths.flatten(self.scales)
    out = {}
    for keys, a in flat.items():
      if keys[-1] == "lora_A":
        mod = keys[:-1]
        out[mod] = (a, flat[mod + ("lora_B",)], scales[mod])
    return out

  def magnitudes(self) -> dict[tuple[str, ...], jax.Array]:
    """{Flax module keys: DoRA magnitude [out]} of the modules that have one."""
    return {keys[:-1]: m for keys, m in tree_paths.flatten(self.params).items()
            if keys[-1] == MAGNITUDE}


def _module_tree(targets: tuple[Target, ...], leaf_fn) -> dict:
  return tree_paths.unflatten({t.keys: leaf_fn(t) for t in targets})


def scales_of(targets: tuple[Target, ...]) -> Any:
  """Per-module float32 scales of resolved targets."""
  return _module_tree(targets, lambda t: jnp.asarray(t.scale, jnp.float32))


def abstract_params(targets: tuple[Target, ...], dtype=jnp.float32) -> Any:
  """Shapes and dtypes of the LoRA factors, for eval_shape-first initialisation."""
  def one(t: Target):
    leaves = {"lora_A": jax.ShapeDtypeStruct((t.in_dim, t.rank), dtype),
              "lora_B": jax.ShapeDtypeStruct((t.rank, t.out_dim), dtype)}
    if t.use_dora:
      leaves[MAGNITUDE] = jax.ShapeDtypeStruct((t.out_dim,), dtype)
    return leaves

  return _module_tree(targets, one)


def init_params(targets: tuple[Target, ...], spec: LoraSpec, rng: jax.Array,
                dtype=jnp.float32, base_params: Any = None) -> Any:
  """Fresh factors: B = 0, A kaiming-uniform (PEFT's default) or gaussian N(0, 1/r).

  DoRA modules also get their magnitude, ||W|| per output column of the base kernel in
  `base_params` (required then), so a fresh adapter computes the base's function.
  """
  keys = jax.random.split(rng, len(targets))
  dora_targets = [t for t in targets if t.use_dora]
  if dora_targets and base_params is None:
    raise ValueError(f"DoRA magnitudes start at the base kernels' column norms: init_params needs "
                     f"base_params for {dora_targets[0].path} (+{len(dora_targets) - 1} more)")
  kernels = tree_paths.flatten(base_params) if dora_targets else {}

  def one(t: Target, key):
    if spec.init == "gaussian":
      a = jax.random.normal(key, (t.in_dim, t.rank), dtype) / t.rank
    else:  # kaiming_uniform(a=sqrt(5)) over fan_in, as torch.nn.Linear and PEFT do
      bound = 1.0 / math.sqrt(t.in_dim)
      a = jax.random.uniform(key, (t.in_dim, t.rank), dtype, -bound, bound)
    leaves = {"lora_A": a, "lora_B": jnp.zeros((t.rank, t.out_dim), dtype)}
    if t.use_dora:
      leaves[MAGNITUDE] = dora.initial_magnitude(kernels[t.keys + ("kernel",)]).astype(dtype)
    return leaves

  return tree_paths.unflatten({t.keys: one(t, k) for t, k in zip(targets, keys)})


def init_adapter(targets: tuple[Target, ...], spec: LoraSpec, rng: jax.Array,
                 dtype=jnp.float32, base_params: Any = None) -> Adapter:
  """A freshly initialised adapter for resolved targets (DoRA needs `base_params`)."""
  return Adapter(init_params(targets, spec, rng, dtype, base_params), scales_of(targets))


def partition_specs(targets: tuple[Target, ...], base_specs: Any) -> Any:
  """LoRA PartitionSpecs from the base tree's kernel specs (A: input dim, B: output dim)."""
  flat = tree_paths.flatten(base_specs) if base_specs is not None else {}

  def one(t: Target):
    spec = flat.get(t.keys + ("kernel",), PartitionSpec())
    in_axis, out_axis = (tuple(spec) + (None, None))[:2]
    specs = {"lora_A": PartitionSpec(in_axis, None), "lora_B": PartitionSpec(None, out_axis)}
    if t.use_dora:
      specs[MAGNITUDE] = PartitionSpec(out_axis)
    return specs

  return _module_tree(targets, one)


def shardings(targets: tuple[Target, ...], base_shardings: Any) -> Any:
  """LoRA NamedShardings derived from the base tree's NamedShardings."""
  flat = tree_paths.flatten(base_shardings)
  any_sharding = next(iter(flat.values()))
  mesh = any_sharding.mesh
  specs = partition_specs(targets, jax.tree.map(
      lambda s: s.spec, base_shardings, is_leaf=lambda x: isinstance(x, NamedSharding)))
  return jax.tree.map(lambda p: NamedSharding(mesh, p), specs,
                      is_leaf=lambda x: isinstance(x, PartitionSpec))
