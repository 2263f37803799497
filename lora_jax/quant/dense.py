"""Dense layers over a quantised kernel: dequantised on the fly, inside the layer's own forward.

`nn.Dense.__call__` would hand its stored kernel to `self.param`, which checks it against the
initialiser's [in, out] shape; a quantised kernel is a pytree of codes and scales, so the layer
is intercepted instead: the kernel is dequantised for this one product (in the layer's compute
dtype; XLA is free to fuse the dequantisation into the matmul) and the layer's own arithmetic
(dtype promotion, precision, bias) follows. No dequantised copy of the whole base exists at any
time: each kernel's float copy lives only as long as its product, and the backward pass
dequantises again rather than keeping it (`_product`, as bitsandbytes does). The codes are
integers and never differentiated; gradients reach the input (and through it every adapter) as
they would through the float kernel.

`lora_jax.lora.forward.inject` installs this interceptor inside its own, so adapted and
non-adapted layers both see the dequantised kernel; `dequantized()` alone serves a plain
`model.apply` over a quantised base.
"""

import contextlib
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lora_jax.quant import kernels


def kernel_of(module: nn.Dense):
  """The module's stored kernel: an array, or a quantised kernel (`kernels.is_quantized`)."""
  return module.get_variable("params", "kernel")


def effective_kernel(module: nn.Dense, dtype):
  """The module's kernel as an array of `dtype`, dequantised if it is stored quantised (for code
  that needs the kernel's values themselves, e.g. a weight norm)."""
  k = kernel_of(module)
  return kernels.dequantize(k, dtype) if kernels.is_quantized(k) else k.astype(dtype)


def _float0_like(tree):
  """Zero cotangents for the quantised kernel: float0 for the integer codes, zeros for scales."""
  def zero(x):
    if jnp.issubdtype(x.dtype, jnp.integer):
      return np.zeros(x.shape, jax.dtypes.float0)
    return jnp.zeros_like(x)
  return jax.tree.map(zero, tree)


def _zero_from(v):
  """0 as a float32 scalar computed from `v`: a data dependency XLA keeps (0 * v is not folded)."""
  return v.reshape(-1)[0].astype(jnp.float32) * 0.0


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _product(x, q, dtype, precision):
  """x @ dequantize(q), contracting the last axis of x."""
  return _product_fwd(x, q, dtype, precision)[0]


def _product_fwd(x, q, dtype, precision):
  # Each dequantisation is tied to its layer's input (`tie`). Without it XLA:CPU's scheduler
  # dequantises every kernel at the start of the step, independent work that it hoists, and
  # shares the forward's copies with the backward's: measured, a float32 copy of the whole base
  # alive in the step's peak. `optimization_barrier` did not hold: XLA:CPU drops it.
  kernel = kernels.dequantize(q, dtype, tie=_zero_from(x))
  return jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())),
                             precision=precision), q


def _product_bwd(dtype, precision, q, g):
  # Only x's gradient: the kernel is frozen, so x is not kept; the kernel is dequantised again
  # from the codes once this layer's cotangent exists, rather than kept from the forward.
  kernel = kernels.dequantize(q, dtype, tie=_zero_from(g))
  dx = jnp.einsum("...o,io->...i", g, kernel, precision=precision)
  return dx, _float0_like(q)


_product.defvjp(_product_fwd, _product_bwd)


def _dense(module: nn.Dense, x):
  q = kernel_of(module)
  bias = module.get_variable("params", "bias") if module.use_bias else None
  dtype = jnp.dtype(module.dtype or jnp.result_type(x, *([] if bias is None else [bias])))
  x, bias = nn.dtypes.promote_dtype(x, bias, dtype=dtype)
  y = _product(x, q, dtype, module.precision)
  if bias is not None:
    y = y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
  return y


def _interceptor(next_fn, args, kwargs, context):
  module = context.module
  if not (isinstance(module, nn.Dense) and context.method_name == "__call__"
          and module.has_variable("params", "kernel") and kernels.is_quantized(kernel_of(module))):
    return next_fn(*args, **kwargs)
  if kwargs or len(args) != 1 or module.dot_general is not None \
      or module.dot_general_cls is not None:
    raise TypeError(f"dense layer {'.'.join(module.path)} over a quantised kernel takes one "
                    f"input and the default dot_general")
  return _dense(module, args[0])


@contextlib.contextmanager
def dequantized():
  """Within this context, dense layers whose kernel is quantised dequantise it per product."""
  with nn.intercept_methods(_interceptor):
    yield
