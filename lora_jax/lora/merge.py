"""Folding adapters into the base tree, blends, and saving a blend as one adapter.

Every blend is an exact sum of scaled deltas against the untouched base, in float32:
    W' = cast(W + sum_i w_i s_i A_i B_i)
never a weighted sum of A's and B's separately (which makes cross terms), and never computed in
the base's low-precision dtype. The seed's blend modes are weight formulas on top of that sum:
additive uses (a, b) as given, interpolative uses (a, b) / (a + b).
A DoRA module's delta is its whole change of the kernel, (W + s A B) m / ||W + s A B|| - W, also
against the untouched base (`lora_jax.lora.dora`); such adapters merge exactly but cannot be
unmerged from the merged kernel alone, nor concatenated or compressed as plain factors.
"""

import functools
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lora_jax import errors, quant, tree_paths
from lora_jax.lora import dora
from lora_jax.lora.adapter import Adapter
from lora_jax.lora.spec import LoraSpec

BLEND_MODES = ("additive", "interpolative")


def blend_weights(mode: str, weights: Sequence[float]) -> jax.Array:
  """Per-adapter weights of a blend mode: additive as given, interpolative normalised to sum 1."""
  for i, weight in enumerate(weights):
    errors.check_finite(weight, f"blend weight {i}")
  w = jnp.asarray(weights, jnp.float32)
  if mode == "additive":
    return w
  if mode == "interpolative":
    total = float(np.sum(np.asarray(weights, np.float64)))
    if total == 0.0:
      raise ValueError(f"interpolative blend needs weights that do not sum to 0, got {list(weights)}")
    return w / jnp.float32(total)
  raise ValueError(f"unknown blend mode {mode!r}; choose one of {', '.join(BLEND_MODES)}")


def _delta_f32(a, b, scale):
  return (a.astype(jnp.float32) * scale.astype(jnp.float32)) @ b.astype(jnp.float32)


def _kernel(flat, keys):
  if keys + ("kernel",) not in flat:
    raise KeyError(f"adapter module {tree_paths.dotted(keys)} has no kernel in the base tree")
  return flat[keys + ("kernel",)]


def _summed_delta(flat_base, adapters: Sequence[Adapter], weights, keys: tuple[str, ...]
                  ) -> jax.Array:
  d = None
  for i, adapter in enumerate(adapters):
    modules = adapter.modules()
    if keys not in modules:
      continue
    a, b, scale = modules[keys]
    magnitudes = adapter.magnitudes()
    if keys in magnitudes:
      w = _kernel(flat_base, keys)
      d_i = dora.merged_kernel(w, a, b, scale, magnitudes[keys]) - w.astype(jnp.float32)
    else:
      d_i = _delta_f32(a, b, scale)
    d_i = weights[i] * d_i
    d = d_i if d is None else d + d_i
  return d


def _adapted_modules(flat_base, adapters: Sequence[Adapter]) -> list[tuple[str, ...]]:
  keys = list(dict.fromkeys(k for adapter in adapters for k in adapter.modules()))
  for k in keys:
    _kernel(flat_base, k)
  return keys


def _refuse_dora(adapters: Sequence[Adapter], what: str) -> None:
  for adapter in adapters:
    if adapter.magnitudes():
      name = tree_paths.dotted(next(iter(adapter.magnitudes())))
      raise ValueError(f"cannot {what} a DoRA adapter (module {name} has a magnitude): its "
                       f"change of the kernel is not a product of factors")


def _fold(base_params, adapters, weights, sign):
  flat = tree_paths.flatten(base_params)
  for keys in _adapted_modules(flat, adapters):
    d = _summed_delta(flat, adapters, weights, keys)
    w = flat[keys + ("kernel",)]
    flat[keys + ("kernel",)] = (w.astype(jnp.float32) + sign * d).astype(w.dtype)
  return tree_paths.unflatten(flat)


@functools.partial(jax.jit, static_argnames=("sign",))
def _fold_jit(base_params, adapters, weights, sign):
  return _fold(base_params, adapters, weights, sign)


# Rows of a kernel folded per iteration in place: ~512 KiB of float32 delta, which stays in cache.
_BLOCK_BYTES = 1 << 19


def _factor_rows(adapters, weights, keys):
  """[(A rows' owner, B scaled by its weight and scale)] of every plain-LoRA adapter on `keys`."""
  return [(a, (weights[i] * scale.astype(jnp.float32)) * b.astype(jnp.float32))
          for i, adapter in enumerate(adapters)
          for k, (a, b, scale) in adapter.modules().items() if k == keys]


def _fold_rows_in_place(w, factors):
  """W + sum_i A_i B'_i, a block of rows at a time into W's own buffer (a loop of in-place
  updates), so no delta as large as W is ever held."""
  rows, cols = w.shape
  block = max(1, min(rows, _BLOCK_BYTES // (4 * cols)))

  def fold(i, w):
    # The last block is shifted back to end at the last row; rows an earlier block already
    # folded get no delta there (a remainder folded after the loop made XLA copy the kernel).
    start = jnp.minimum(i * block, rows - block)
    fresh = (start + jnp.arange(block) >= i * block)[:, None]
    w_rows = jax.lax.dynamic_slice_in_dim(w, start, block, 0).astype(jnp.float32)
    for a, b in factors:
      a_rows = jax.lax.dynamic_slice_in_dim(a, start, block, 0).astype(jnp.float32)
      w_rows = w_rows + jnp.where(fresh, a_rows, 0.0) @ b
    return jax.lax.dynamic_update_slice_in_dim(w, w_rows.astype(w.dtype), start, 0)

  return jax.lax.fori_loop(0, -(-rows // block), fold, w)


def _fold_in_place(base_params, adapters, weights, sign):
  # XLA:CPU computes every kernel's float32 delta before any add, holding temporaries as large as
  # the base (memory analysis: 1.00 GiB of temporaries for a 1 GiB base); donated, the plain-LoRA
  # kernels are folded row block by row block into their own buffers instead. DoRA's delta needs
  # the whole column norm, and a kernel whose factors do not span it as [in, r] [r, out] keeps the
  # whole-kernel fold.
  flat = tree_paths.flatten(base_params)
  plain = [adapter for adapter in adapters if not adapter.magnitudes()]
  rest = [i for i, adapter in enumerate(adapters) if adapter.magnitudes()]
  blocked = set()
  if not rest:
    for keys in _adapted_modules(flat, adapters):
      w = flat[keys + ("kernel",)]
      factors = _factor_rows(plain, sign * weights, keys)
      if w.ndim == 2 and all(a.shape[0] == w.shape[0] and b.shape[1] == w.shape[1]
                             for a, b in factors):
        flat[keys + ("kernel",)] = _fold_rows_in_place(w, factors)
        blocked.add(keys)
  for keys in _adapted_modules(flat, adapters):
    if keys in blocked:
      continue
    d = _summed_delta(flat, adapters, weights, keys)
    w = flat[keys + ("kernel",)]
    flat[keys + ("kernel",)] = (w.astype(jnp.float32) + sign * d).astype(w.dtype)
  return tree_paths.unflatten(flat)


@functools.partial(jax.jit, static_argnames=("sign",), donate_argnums=(0,))
def _fold_jit_donated(base_params, adapters, weights, sign):
  return _fold_in_place(base_params, adapters, weights, sign)


def _nonzero(adapters: Sequence[Adapter], weights) -> tuple[tuple[Adapter, ...], jax.Array]:
  # An adapter of weight exactly 0 is left out of the compiled sum, so the result is bit-identical
  # to the blend without it (XLA may fuse a sum of two deltas differently from one).
  w = np.ones(len(adapters), np.float32) if weights is None else np.asarray(weights, np.float32)
  if w.shape != (len(adapters),):
    raise ValueError(f"{len(adapters)} adapters but weights of shape {w.shape}")
  keep = [i for i in range(len(adapters)) if w[i] != 0.0]
  return tuple(adapters[i] for i in keep), jnp.asarray(w[keep])


def merge(base_params: Any, adapters: Sequence[Adapter], weights=None, *,
          donate: bool = False) -> Any:
  """Base tree with `sum_i weights[i] * delta_i` folded into each adapted kernel.

  With `donate=True` the base buffers are reused for the result (the caller's base is consumed).
  A quantised base (`lora_jax.quant`) is dequantised to float32 first: the merge of a QLoRA
  adapter is a float base, every kernel float32.
  """
  if quant.is_quantized_tree(base_params):
    base_params, donate = quant.dequantize_tree(base_params, jnp.float32), False
  adapters, weights = _nonzero(adapters, weights)
  fn = _fold_jit_donated if donate else _fold_jit
  return fn(base_params, adapters, weights, 1.0)


def unmerge(merged_params: Any, adapters: Sequence[Adapter], weights=None) -> Any:
  """Undo `merge` with the same adapters and weights (exact up to float rounding)."""
  # A DoRA delta depends on the base it was merged into, which the merged kernel no longer holds.
  _refuse_dora(adapters, "unmerge")
  adapters, weights = _nonzero(adapters, weights)
  return _fold_jit(merged_params, adapters, weights, -1.0)


def concat(adapters: Sequence[Adapter], weights=None) -> Adapter:
  """One adapter whose delta is exactly the weighted sum: factors concatenated along the rank.

  A = [A_1 | A_2 | ...], B = [w_1 s_1 B_1; w_2 s_2 B_2; ...], scale 1. Modules only some adapters
  touch get only those adapters' factors.
  """
  _refuse_dora(adapters, "concatenate")
  weights = np.ones(len(adapters), np.float32) if weights is None else np.asarray(
      weights, np.float32)
  parts: dict[tuple[str, ...], list] = {}
  for w, adapter in zip(weights, adapters):
    for keys, (a, b, scale) in adapter.modules().items():
      b_scaled = (b.astype(jnp.float32) * (scale * w)).astype(b.dtype)
      parts.setdefault(keys, []).append((a, b_scaled))
  params = {k: {"lora_A": jnp.concatenate([a for a, _ in v], axis=1),
                "lora_B": jnp.concatenate([b for _, b in v], axis=0)} for k, v in parts.items()}
  scales = {k: jnp.ones((), jnp.float32) for k in parts}
  return Adapter(tree_paths.unflatten(params), tree_paths.unflatten(scales))


def _compress_one(a, b, scale, rank):
  # delta = (s A) B = Qa Ra Rb^T Qb^T; an SVD of the small core gives the best rank-k factors.
  qa, ra = jnp.linalg.qr(a.astype(jnp.float32) * scale)
  qb, rb = jnp.linalg.qr(b.astype(jnp.float32).T)
  u, s, vt = jnp.linalg.svd(ra @ rb.T, full_matrices=False)
  k = min(rank, s.shape[0])
  root = jnp.sqrt(s[:k])
  return (qa @ u[:, :k]) * root, (root[:, None] * vt[:k]) @ qb.T


def svd_compress(adapter: Adapter, rank: int) -> Adapter:
  """Best rank-`rank` approximation of each module's delta (exact when rank >= its rank), scale 1.

  Used to save a blend (see `concat`) as one adapter of a chosen rank.
  """
  _refuse_dora([adapter], "compress")
  params, scales = {}, {}
  for keys, (a, b, scale) in adapter.modules().items():
    new_a, new_b = _compress_one(a, b, scale, rank)
    params[keys] = {"lora_A": new_a.astype(a.dtype), "lora_B": new_b.astype(b.dtype)}
    scales[keys] = jnp.ones((), jnp.float32)
  return Adapter(tree_paths.unflatten(params), tree_paths.unflatten(scales))


def unit_scale_spec(adapter: Adapter) -> LoraSpec:
  """A spec that describes a `concat` or `svd_compress` result exactly: per-module rank, scale 1."""
  ranks = {tree_paths.dotted(k): a.shape[1] for k, (a, _, _) in adapter.modules().items()}
  exact = {"^" + re.escape(p) + "$": r for p, r in sorted(ranks.items())}
  return LoraSpec(rank=1, alpha=1.0, include=tuple(exact), rank_pattern=exact,
                  alpha_pattern={k: float(v) for k, v in exact.items()})
