"""A frozen base tree with its dense kernels quantised, its shapes, and its shardings.

Which leaves are quantised: every 2-D leaf named `kernel` (the kernels of `nn.Dense`, the only
linear layer the families use) whose input dimension the kind's block divides. The rest
(embeddings, norms, biases, and a kernel whose input is not a multiple of 64, e.g. a 23-feature
input projection) stay plain arrays in the base dtype; `describe` names the ones kept.

Shardings follow the float kernel's partition spec (input axis, output axis): codes and
first-level scales take it as it is; per-channel scales take its output axis; the second level of
NF4 (a few bytes per 16,384 weights) takes its input axis and is replicated along the output one.
A mesh axis that does not divide the number of blocks is an error naming both.
"""

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from lora_jax import tree_paths
from lora_jax.quant import kernels
from lora_jax.quant.kernels import BLOCK, BLOCK2, Int8Kernel, NF4Kernel


class QuantShardingError(ValueError):
  """A quantised kernel whose blocks do not split evenly over the mesh axis of its input."""


def _is_target(keys: tuple[str, ...], leaf: Any, kind: str) -> bool:
  shape = tuple(leaf.shape)
  return (keys[-1] == "kernel" and len(shape) == 2
          and (kind == "int8" or shape[0] % BLOCK == 0))


def _cast(x: Any, dtype: str) -> Any:
  return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x


def quantize_tree(params: Any, kind: str, dtype: str) -> dict:
  """`params` (host or device) with its target kernels quantised as `kind`, the rest as `dtype`.

  Host numpy leaves, nested dicts: put them in place with `jax.device_put(tree, shardings(...))`.
  """
  out = {}
  for keys, leaf in tree_paths.flatten(params).items():
    if _is_target(keys, leaf, kind):
      out[keys] = kernels.quantize(leaf, kind, tree_paths.dotted(keys))
    else:
      out[keys] = _cast(np.asarray(leaf), dtype)
  return tree_paths.unflatten(out)


def abstract_kernel(shape: tuple[int, int], kind: str) -> Int8Kernel | NF4Kernel:
  """The ShapeDtypeStructs of a kernel of `shape` quantised as `kind`."""
  s = jax.ShapeDtypeStruct
  n_in, n_out = shape
  if kind == "int8":
    return Int8Kernel(s(shape, jnp.int8), s((n_out,), jnp.float32))
  if kind == "int8_block":
    return Int8Kernel(s(shape, jnp.int8), s((n_in // BLOCK, n_out), jnp.float32))
  return NF4Kernel(s((n_in // 2, n_out), jnp.uint8), s((n_in // BLOCK, n_out), jnp.uint8),
                   s((n_in // BLOCK, -(-n_out // BLOCK2)), jnp.float32), s((1,), jnp.float32))


def abstract_tree(abstract: Any, kind: str, dtype: str) -> dict:
  """The quantised tree's shapes and dtypes, from the float base's abstract tree."""
  out = {}
  for keys, leaf in tree_paths.flatten(abstract).items():
    if _is_target(keys, leaf, kind):
      out[keys] = abstract_kernel(tuple(leaf.shape), kind)
    else:
      is_float = jnp.issubdtype(leaf.dtype, jnp.floating)
      out[keys] = jax.ShapeDtypeStruct(leaf.shape, jnp.dtype(dtype) if is_float else leaf.dtype)
  return tree_paths.unflatten(out)


def _axis_size(mesh, entry) -> int:
  names = () if entry is None else (entry if isinstance(entry, tuple) else (entry,))
  return math.prod(mesh.shape[n] for n in names)


def _kernel_shardings(path: str, shape: tuple[int, int], kind: str, sharding: NamedSharding):
  mesh, spec = sharding.mesh, tuple(sharding.spec) + (None,) * (2 - len(sharding.spec))
  in_ax, out_ax = spec
  n_in = shape[0]
  rows = {"int8": n_in, "int8_block": n_in // BLOCK, "nf4": n_in // BLOCK}[kind]
  size = _axis_size(mesh, in_ax)
  if rows % size:
    raise QuantShardingError(
        f"{path}: its input axis of {n_in} is sharded over mesh axis {in_ax} of size {size}, "
        f"but {kind} stores it as {rows} blocks of {BLOCK}, not divisible by {size}; shard that "
        f"kernel's input over fewer devices or use training.quantize='int8'")
  named = lambda *s: NamedSharding(mesh, PartitionSpec(*s))
  if kind == "int8":
    return Int8Kernel(named(in_ax, out_ax), named(out_ax))
  if kind == "int8_block":
    return Int8Kernel(named(in_ax, out_ax), named(in_ax, out_ax))
  return NF4Kernel(named(in_ax, out_ax), named(in_ax, out_ax), named(in_ax, None), named())


def shardings(abstract: Any, float_shardings: Any, kind: str) -> dict:
  """Shardings of the quantised tree, derived from the float base's (`mesh.param_shardings`)."""
  sh = tree_paths.flatten(float_shardings)
  out = {}
  for keys, leaf in tree_paths.flatten(abstract).items():
    if _is_target(keys, leaf, kind):
      out[keys] = _kernel_shardings(tree_paths.dotted(keys), tuple(leaf.shape), kind, sh[keys])
    else:
      out[keys] = sh[keys]
  return tree_paths.unflatten(out)


def _is_node(x: Any) -> bool:
  return kernels.is_quantized(x)


def dequantize_tree(params: Any, dtype: Any = jnp.float32) -> Any:
  """The tree with every quantised kernel dequantised to `dtype` (other leaves as they are)."""
  return jax.tree.map(lambda x: kernels.dequantize(x, dtype) if _is_node(x) else x, params,
                      is_leaf=_is_node)


def is_quantized_tree(params: Any) -> bool:
  """Whether any kernel of the tree is quantised."""
  return any(_is_node(x) for x in jax.tree.leaves(params, is_leaf=_is_node))


def nbytes(params: Any) -> int:
  """Bytes of all arrays of a (quantised or float) tree."""
  return sum(kernels.nbytes(x) for x in jax.tree.leaves(params, is_leaf=_is_node))


def describe(abstract: Any, kind: str, dtype: str) -> str:
  """One line: how many kernels are quantised, and which 2-D kernels are kept in `dtype`."""
  flat = tree_paths.flatten(abstract)
  done = [k for k, v in flat.items() if _is_target(k, v, kind)]
  kept = [f"{tree_paths.dotted(k)} (input {v.shape[0]} is not a multiple of {BLOCK})"
          for k, v in flat.items()
          if k[-1] == "kernel" and len(v.shape) == 2 and not _is_target(k, v, kind)]
  line = f"base quantised as {kind}: {len(done)} dense kernels; other leaves in {dtype}"
  return line + (f"; kernels kept in {dtype}: {', '.join(kept)}" if kept else "")
