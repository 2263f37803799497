"""Flax dense layers in bfloat16 through oneDNN, where `dense_dispatch.choose` picks it.

Models keep plain `nn.Dense`; within `onednn()` a layer whose product is bfloat16 (its dtype, or
its inputs' when it has none) computes x @ W with `bf16_matmul.dense` and adds its bias, the
arithmetic of `nn.Dense.__call__` with another matmul. A layer with its own dot_general, a
precision, or a quantised kernel (`lora_jax.quant.dense` handles those before this) runs as it is.
`lora_jax.lora.forward.inject` installs this, so every train and eval step of every family sees it.
"""

import contextlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lora_jax.kernels import onednn
from lora_jax.models import bf16_matmul
from lora_jax.models import dense_dispatch

USE_ONEDNN = True  # off for an A/B in one process (bench/lora_step_bench.py --bf16_path)


def path_for(dtype) -> str:
  """The dispatch decision for a product of `dtype` on this process's backend and CPU."""
  name = np.dtype(dtype).name
  on_cpu = jax.default_backend() == "cpu"
  call = dense_dispatch.Call(
      backend=jax.default_backend(), dtype=name,
      cpu_flags=dense_dispatch.cpu_flags() if on_cpu else frozenset(),
      # Only asked where it matters, so other backends and dtypes never load the library.
      kernel_built=USE_ONEDNN and on_cpu and name == "bfloat16" and onednn.load())
  path, why = dense_dispatch.choose(call)
  if not USE_ONEDNN and name == "bfloat16" and on_cpu:
    why = "switched off (bf16_dense.USE_ONEDNN)"
  dense_dispatch.log_once(call, path, why)
  return path


def _plain(module: nn.Dense) -> bool:
  return (module.precision is None and module.dot_general is None
          and module.dot_general_cls is None and module.has_variable("params", "kernel")
          and isinstance(module.get_variable("params", "kernel"), jax.Array | np.ndarray))


def _interceptor(next_fn, args, kwargs, context):
  module = context.module
  if not (isinstance(module, nn.Dense) and context.method_name == "__call__" and not kwargs
          and len(args) == 1 and _plain(module)):
    return next_fn(*args, **kwargs)
  kernel = module.get_variable("params", "kernel")
  bias = module.get_variable("params", "bias") if module.use_bias else None
  x, kernel, bias = nn.dtypes.promote_dtype(args[0], kernel, bias, dtype=module.dtype)
  if x.dtype != jnp.bfloat16 or path_for(x.dtype) != "onednn_bf16":
    return next_fn(*args, **kwargs)
  y = bf16_matmul.dense(x, kernel)
  if bias is not None:
    y = y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
  return y


@contextlib.contextmanager
def use_onednn():
  """Within this context, bfloat16 dense layers use oneDNN where the dispatch chooses it."""
  with nn.intercept_methods(_interceptor):
    yield
