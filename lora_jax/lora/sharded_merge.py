"""Folding adapters into a base that is sharded over a device mesh, each device its own slice.

A kernel W [in, out] sharded as P(r, c) needs, on the device holding block (i, j), the block
(i, j) of A B: rows i of A [in, rank] times columns j of B [rank, out]. So A is split like W's
rows (P(r, None)), B like W's columns (P(None, c)) -- the shardings LoRA's factors already get in
training (`lora.shardings`) -- and a shard_map folds every block where it lives: no collective
(DoRA's one is below), no kernel ever gathered, the result keeps W's sharding. Inside, a device
folds its block a row block at a time into the block's own donated buffer
(`merge._fold_rows_in_place`, here on a local array, where its slicing stays local), so a device
holds its shard plus a ~512 KiB delta.

A DoRA module's kernel (W + s A B) m / ||W + s A B|| needs each column's norm over every row
shard: its magnitude m is split like W's columns, each device sums the squares of its rows of
W + s A B per column, and one psum over the mesh axes that split W's rows -- an all-reduce of
[DoRA adapters on the kernel, the block's columns] float32, the only collective of a sharded
merge, none where rows are not split -- gives the norms that scale the block in place
(`lora.sharded_dora`). Several adapters and blend weights, DoRA or plain, fold as `merge` folds
them.

The values are `merge(..., donate=True)`'s on an unsharded base up to float32 rounding: the same
per-row products W + A_rows (w s B), but XLA's dot over a narrower block of columns may sum the
rank terms in another order (`tests/sharded_merge_test.py`: within 4 ulps of the kernel's scale,
measured at most 2; DoRA kernels, whose norms are summed per row shard, also within 4, measured
at most 1.8; untouched leaves bit for bit). Quantised bases are refused.
"""

from typing import Any, Sequence

import jax
from jax.sharding import NamedSharding, PartitionSpec

from lora_jax import quant, tree_paths
# The row-block fold and the factor list are merge's own, applied to a local block here.
from lora_jax.lora.merge import (  # pylint: disable=protected-access
    _factor_rows, _fold_rows_in_place, _nonzero)
from lora_jax.lora import sharded_dora
from lora_jax.lora.adapter import Adapter


def _spec_2d(spec: PartitionSpec) -> tuple[Any, Any]:
  return (tuple(spec) + (None, None))[:2]


def _fold_kernel(w, factors, sharding: NamedSharding):
  rows, cols = _spec_2d(sharding.spec)
  n = len(factors)
  fold = jax.shard_map(
      lambda w, a_list, b_list: _fold_rows_in_place(w, list(zip(a_list, b_list))),
      mesh=sharding.mesh,
      in_specs=(PartitionSpec(rows, cols), [PartitionSpec(rows, None)] * n,
                [PartitionSpec(None, cols)] * n),
      out_specs=PartitionSpec(rows, cols))
  return fold(w, [a for a, _ in factors], [b for _, b in factors])


def _check(base_shardings: Any, adapters: Sequence[Adapter]) -> None:
  flat = tree_paths.flatten(base_shardings)
  for adapter in adapters:
    for keys, (a, b, _) in adapter.modules().items():
      sharding = flat.get(keys + ("kernel",))
      if sharding is None:
        raise KeyError(f"adapter module {tree_paths.dotted(keys)} has no kernel in the base tree")
      if not isinstance(sharding, NamedSharding):
        raise ValueError(f"{tree_paths.dotted(keys)}.kernel has sharding {sharding}, expected a "
                         "NamedSharding over a mesh")
      if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"{tree_paths.dotted(keys)}: factors {a.shape} and {b.shape} are not "
                         "[in, rank] and [rank, out]")
      m = adapter.magnitudes().get(keys)
      if m is not None and m.shape != b.shape[1:]:
        raise ValueError(f"{tree_paths.dotted(keys)}: DoRA magnitude {m.shape} does not match "
                         f"factor B {b.shape} ([out] for B [rank, out])")


def jit_merge(base_shardings: Any, adapters: Sequence[Adapter]):
  """The compiled merge for bases sharded as `base_shardings` (a tree of NamedShardings):
  fn(base, adapters, weights) -> merged, the base donated, every output sharded as its input.

  `adapters` fixes which modules are folded (their values are arguments); the scale plan lowers
  the returned function on abstract arrays.
  """
  _check(base_shardings, adapters)
  flat_shardings = tree_paths.flatten(base_shardings)

  def fold(base_params, adapters, weights):
    flat = tree_paths.flatten(base_params)
    modules = list(dict.fromkeys(k for adapter in adapters for k in adapter.modules()))
    for keys in modules:
      w = flat[keys + ("kernel",)]
      sharding = flat_shardings[keys + ("kernel",)]
      plain = [i for i, adapter in enumerate(adapters)
               if keys in adapter.modules() and keys not in adapter.magnitudes()]
      doras = [i for i, adapter in enumerate(adapters) if keys in adapter.magnitudes()]
      factors = _factor_rows([adapters[i] for i in plain], [weights[i] for i in plain], keys)
      shapes = [(a.shape, b.shape) for a, b, _ in
                (adapters[i].modules()[keys] for i in plain + doras)]
      wrong = [(a, b) for a, b in shapes if a[0] != w.shape[0] or b[1] != w.shape[1]]
      if w.ndim != 2 or wrong:
        raise ValueError(f"{tree_paths.dotted(keys)}.kernel {w.shape} does not take factors "
                         f"{wrong or shapes}")
      if doras:
        dora_terms = [adapters[i].modules()[keys] + (adapters[i].magnitudes()[keys], weights[i])
                      for i in doras]
        flat[keys + ("kernel",)] = sharded_dora.fold_kernel(
            w, factors, dora_terms, sharding.mesh, *_spec_2d(sharding.spec))
      else:
        flat[keys + ("kernel",)] = _fold_kernel(w, factors, sharding)
    return tree_paths.unflatten(flat)

  return jax.jit(fold, out_shardings=base_shardings, donate_argnums=(0,))


def merge_sharded(base_params: Any, adapters: Sequence[Adapter], weights=None) -> Any:
  """`merge(base, adapters, weights, donate=True)` for a base of mesh-sharded jax.Arrays: each
  device folds its own block of every kernel; the caller's base is consumed."""
  if quant.is_quantized_tree(base_params):
    raise ValueError("a quantised base cannot be merged sharded; dequantise it first "
                     "(lora.merge does)")
  for keys, leaf in tree_paths.flatten(base_params).items():
    if not isinstance(leaf, jax.Array):
      raise ValueError(f"merge_sharded takes a base of jax.Arrays placed on a mesh; "
                       f"{tree_paths.dotted(keys)} is a {type(leaf).__name__}")
  adapters, weights = _nonzero(adapters, weights)
  shardings = jax.tree.map(lambda x: x.sharding, base_params)
  return jit_merge(shardings, adapters)(base_params, adapters, weights)
