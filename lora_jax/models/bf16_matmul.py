"""bfloat16 matrix products through oneDNN (lora_jax/kernels/bf16_matmul.cc), sharded and with a gradient.

`product(a, b, trans_a, trans_b)` is one 2-D product op(a) op(b); a transpose is a flag the kernel
reads as a stride, never a copied array. `dense(x, w)` is x @ w over x's last axis with its own
gradient: dx = g w^T and dw = x^T g are the same kernel with transpose flags, and dw is not
computed at all when w is not differentiated (LoRA's frozen base).

Under a mesh each product is custom-partitioned: the rows of op(a) and the columns of op(b) stay
split as they come; a split contracting dimension (tokens in dw = x^T g, when the batch is
data-parallel) is reduced across its mesh axes after each device's partial product, in float32,
as XLA's own partitioner would reduce a sharded dot. Without this, XLA would gather every
operand onto every device around the opaque custom call.
"""

import functools

import jax
from jax.experimental.custom_partitioning import custom_partitioning
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from lora_jax.kernels import onednn


def _require_kernel():
  if not onednn.load():
    raise RuntimeError("the oneDNN bfloat16 matmul is not built for this machine: apt-get "
                       "install libdnnl-dev, then python -m lora_jax.kernels")


def _shape(a, b, trans_a: bool, trans_b: bool) -> tuple[int, int]:
  return (a.shape[1] if trans_a else a.shape[0]), (b.shape[0] if trans_b else b.shape[1])


def _ffi(a, b, trans_a: bool, trans_b: bool, out_dtype):
  _require_kernel()
  return jax.ffi.ffi_call(onednn.TARGET,
                          jax.ShapeDtypeStruct(_shape(a, b, trans_a, trans_b), out_dtype))(
                              a, b, trans_a=trans_a, trans_b=trans_b)


def _axes(entry) -> tuple[str, ...]:
  if entry is None:
    return ()
  return tuple(entry) if isinstance(entry, tuple) else (entry,)


@functools.cache
def _partitioned(trans_a: bool, trans_b: bool, out_dtype):
  """The product for one (transposes, output dtype), custom-partitioned (module docstring)."""
  def op(a, b):
    return _ffi(a, b, trans_a, trans_b, out_dtype)

  wrapped = custom_partitioning(op)
  a_rule = "k m" if trans_a else "m k"
  b_rule = "n k" if trans_b else "k n"

  def partition(mesh, arg_shapes, result_shape):
    a_spec = tuple(arg_shapes[0].sharding.spec) + (None,) * 2
    b_spec = tuple(arg_shapes[1].sharding.spec) + (None,) * 2
    (m_at, k_at), (k_bt, n_at) = ((1, 0) if trans_a else (0, 1)), ((1, 0) if trans_b else (0, 1))
    # The contracting dimension stays split only where both operands split it alike; rows and
    # columns keep their axes unless another dimension already uses them (then replicated).
    k_axes = _axes(a_spec[k_at]) if _axes(a_spec[k_at]) == _axes(b_spec[k_bt]) else ()
    m_axes = () if set(_axes(a_spec[m_at])) & set(k_axes) else _axes(a_spec[m_at])
    n_axes = () if set(_axes(b_spec[n_at])) & set(k_axes + m_axes) else _axes(b_spec[n_at])
    spec = lambda axes: axes or None
    a_dims, b_dims = [None, None], [None, None]
    a_dims[m_at], a_dims[k_at] = spec(m_axes), spec(k_axes)
    b_dims[k_bt], b_dims[n_at] = spec(k_axes), spec(n_axes)
    args = (NamedSharding(mesh, P(*a_dims)), NamedSharding(mesh, P(*b_dims)))
    result = NamedSharding(mesh, P(spec(m_axes), spec(n_axes)))

    def lower(a, b):
      if not k_axes:
        return op(a, b)
      partial = _ffi(a, b, trans_a, trans_b, jnp.float32)
      return jax.lax.psum(partial, k_axes).astype(out_dtype)

    return mesh, lower, result, args

  wrapped.def_partition(partition=partition, sharding_rule=f"{a_rule}, {b_rule} -> m n",
                        reduction_factors=("k",))
  return wrapped


def product(a, b, trans_a: bool = False, trans_b: bool = False, out_dtype=jnp.bfloat16):
  """op(a) op(b) of two bfloat16 matrices by oneDNN, op a transpose where its flag is set."""
  if a.dtype != jnp.bfloat16 or b.dtype != jnp.bfloat16:
    raise TypeError(f"the oneDNN product takes bfloat16 operands, not {a.dtype} and {b.dtype}")
  return _partitioned(bool(trans_a), bool(trans_b), jnp.dtype(out_dtype))(a, b)


@jax.custom_vjp
def dense(x, w):
  """x @ w over the last axis of x, bfloat16 in and out, by oneDNN."""
  return product(x.reshape(-1, x.shape[-1]), w).reshape(*x.shape[:-1], w.shape[1])


def _dense_fwd(x, w):
  base_differentiated = w.perturbed  # symbolic_zeros=True: a frozen kernel gets no gradient
  x, w = x.value, w.value
  x_NxI = x.reshape(-1, x.shape[-1])
  y_NxO = product(x_NxI, w)
  return y_NxO.reshape(*x.shape[:-1], w.shape[1]), (x, w, base_differentiated)


def _dense_bwd(residuals, g):
  x, w, base_differentiated = residuals
  x_NxI = x.reshape(-1, x.shape[-1])
  g_NxO = g.reshape(-1, g.shape[-1]).astype(jnp.bfloat16)
  dx = product(g_NxO, w, trans_b=True).reshape(x.shape)
  dw = product(x_NxI, g_NxO, trans_a=True) if base_differentiated else None
  return dx, dw


dense.defvjp(_dense_fwd, _dense_bwd, symbolic_zeros=True)
