"""Dense layers over a quantised kernel: dequantised on the fly, inside the layer's own forward.

`nn.Dense.__call__` would hand its stored kernel to `self.param`, which checks it against the
initialiser's [in, out] shape; a quantised kernel is a pytree of codes and scales, so the layer
is intercepted instead: the kernel is dequantised for this one product (in the layer's compute
dtype; XLA is free to fuse the dequantisation into the matmul) and the layer's own arithmetic
(dtype promotion, precision, bias) follows. No dequantised copy of the whole base exists at any
time: each kernel's float copy lives only as long as its product, in the backward pass too (the
product is rematerialised, see `_dense`). The codes are integers and
never differentiated; gradients reach the input (and through it every adapter) as they would
through the float kernel.

`lora_jax.lora.forward.inject` installs this interceptor inside its own, so adapted and
non-adapted layers both see the dequantised kernel; `dequantized()` alone serves a plain
`model.apply` over a quantised base.
"""

import contextlib

import flax.linen as nn
import jax
import jax.numpy as jnp

from lora_jax.quant import kernels


def kernel_of(module: nn.Dense):
  """The module's stored kernel: an array, or a quantised kernel (`kernels.is_quantized`)."""
  return module.get_variable("params", "kernel")


def _dense(module: nn.Dense, x):
  q = kernel_of(module)
  bias = module.get_variable("params", "bias") if module.use_bias else None
  dtype = module.dtype or jnp.result_type(x, *([] if bias is None else [bias]))
  x, bias = nn.dtypes.promote_dtype(x, bias, dtype=dtype)

  # Rematerialised: the backward pass (x's gradient needs the kernel) dequantises again from the
  # codes rather than keeping every layer's float kernel alive from the forward, which would put
  # a dequantised copy of the whole base in the step's peak memory (bitsandbytes does the same).
  @jax.checkpoint
  def product(x, q):
    return jax.lax.dot_general(x, kernels.dequantize(q, dtype), (((x.ndim - 1,), (0,)), ((), ())),
                               precision=module.precision)

  y = product(x, q)
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
