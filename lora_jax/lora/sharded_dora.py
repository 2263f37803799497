"""DoRA's fold on one device's block of a sharded kernel: the column norm costs one small psum.

A DoRA adapter k at blend weight w_k changes a kernel by w_k ((W + s_k A_k B_k) c_k - W), with
c_k = m_k / ||W + s_k A_k B_k|| per output column, against the untouched base (`merge`, `dora`).
Summed with the plain adapters' w_i s_i A_i B_i, the merged kernel is
    W' = W g + sum_plain A_i (w_i s_i B_i) + sum_dora A_k (w_k c_k s_k B_k),
    g = (1 - sum_k w_k) + sum_k w_k c_k         (g = c for one DoRA adapter at weight 1)
a column scale of W plus products whose B columns are scaled: once c is known, the row-block
in-place fold of plain LoRA (`merge._fold_rows_in_place`, here with the column scale g).

The norm is the one thing a block cannot compute alone. A device sums the squares of its rows of
W + s_k A_k B_k per column, a row block at a time (nothing as large as the block is held), and a
psum over the mesh axes that split W's rows adds the row shards' sums: one all-reduce of
[DoRA adapters on the kernel, the block's columns] float32 per kernel -- a column's worth of
floats, never a kernel -- and none where W's rows are not split. A DoRA fold reads the block
twice (the norm pass, then the fold) and writes it once. The products run at HIGHEST precision,
as `dora.merged_kernel`'s do (on TPUs the default would round the factors to bfloat16).
"""

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

from lora_jax.lora.merge import _BLOCK_BYTES  # pylint: disable=protected-access

_HIGHEST = jax.lax.Precision.HIGHEST


def _row_blocks(w):
  rows, cols = w.shape
  block = max(1, min(rows, _BLOCK_BYTES // (4 * cols)))
  return block, -(-rows // block)


def _rows_at(x, i, block, rows):
  """Rows [start, start + block) of x, and which of them no earlier block covered: the last block
  is shifted back to end at the last row (as `merge._fold_rows_in_place` does)."""
  start = jnp.minimum(i * block, rows - block)
  fresh = (start + jnp.arange(block) >= i * block)[:, None]
  return start, fresh, jax.lax.dynamic_slice_in_dim(x, start, block, 0)


def _squared_column_sums(w, doras):
  """[len(doras), cols]: per column, the sum over this block's rows of (W + A (s B))^2."""
  rows, cols = w.shape
  block, n = _row_blocks(w)

  def add(i, sums):
    start, fresh, w_rows = _rows_at(w, i, block, rows)
    w_rows = w_rows.astype(jnp.float32)
    out = []
    for a, sb in doras:
      a_rows = jax.lax.dynamic_slice_in_dim(a, start, block, 0).astype(jnp.float32)
      v = w_rows + jnp.matmul(a_rows, sb, precision=_HIGHEST)
      out.append(jnp.sum(jnp.where(fresh, v * v, 0.0), axis=0))
    return sums + jnp.stack(out)

  # zeros_like keeps w's manual axes, which the loop's carry must have from the start.
  sums = jnp.zeros_like(w, jnp.float32, shape=(len(doras), cols))
  return jax.lax.fori_loop(0, n, add, sums)


def _fold_scaled_in_place(w, g, factors):
  """W g + sum_i A_i B'_i (g per column), a row block at a time into W's own buffer."""
  rows, _ = w.shape
  block, n = _row_blocks(w)

  def fold(i, w):
    start, fresh, w_rows = _rows_at(w, i, block, rows)
    w_rows = w_rows.astype(jnp.float32)
    new = w_rows * g
    for a, b in factors:
      a_rows = jax.lax.dynamic_slice_in_dim(a, start, block, 0).astype(jnp.float32)
      new = new + jnp.matmul(a_rows, b, precision=_HIGHEST)
    # Rows an earlier block already folded keep what it wrote.
    new = jnp.where(fresh, new, w_rows)
    return jax.lax.dynamic_update_slice_in_dim(w, new.astype(w.dtype), start, 0)

  return jax.lax.fori_loop(0, n, fold, w)


def _local_fold(row_axes, w, plain_a, plain_b, dora_a, dora_b, scales, magnitudes, weights):
  """One device's block: W g + sum_plain A B' + sum_dora A (w c s B), D DoRA adapters, C columns."""
  scaled_b = [s * b.astype(jnp.float32) for s, b in zip(scales, dora_b)]
  sums_DxC = _squared_column_sums(w, list(zip(dora_a, scaled_b)))
  if row_axes:
    sums_DxC = jax.lax.psum(sums_DxC, row_axes)  # the one collective, a column's worth a DoRA
  c_DxC = jnp.stack([m.astype(jnp.float32) for m in magnitudes]) / jnp.sqrt(sums_DxC)
  w_Dx1 = jnp.stack(weights)[:, None]
  g_C = (1.0 - jnp.sum(w_Dx1)) + jnp.sum(w_Dx1 * c_DxC, axis=0)
  factors = list(zip(plain_a, plain_b)) + [
      (a, (w_Dx1[k] * c_DxC[k]) * scaled_b[k]) for k, a in enumerate(dora_a)]
  return _fold_scaled_in_place(w, g_C, factors)


def _split_axes(mesh, entry) -> tuple[str, ...]:
  """The mesh axes of a PartitionSpec entry that have more than one device."""
  names = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
  return tuple(a for a in names if mesh.shape[a] > 1)


def fold_kernel(w, plain: Sequence[tuple[Any, Any]], doras: Sequence[tuple[Any, ...]],
                mesh: Mesh, rows: Any, cols: Any):
  """W [in, out] sharded P(rows, cols) over `mesh` with plain factors [(A, w s B)] and DoRA
  adapters [(A, B, scale, magnitude, weight)] folded, every device its own block, in place."""
  row_axes = _split_axes(mesh, rows)
  n, k = len(plain), len(doras)
  a_spec, b_spec, m_spec = PartitionSpec(rows, None), PartitionSpec(None, cols), PartitionSpec(cols)
  fold = jax.shard_map(
      lambda *args: _local_fold(row_axes, *args),
      mesh=mesh,
      in_specs=(PartitionSpec(rows, cols), [a_spec] * n, [b_spec] * n, [a_spec] * k,
                [b_spec] * k, [PartitionSpec()] * k, [m_spec] * k, [PartitionSpec()] * k),
      out_specs=PartitionSpec(rows, cols))
  columns = list(zip(*doras))
  return fold(w, [a for a, _ in plain], [b for _, b in plain], *map(list, columns))
