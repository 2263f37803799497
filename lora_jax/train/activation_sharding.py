"""Activations pinned to the batch split: the layout FSDP and data parallelism assume.

The step's arguments carry shardings (the batch over ('data', 'fsdp'), parameters by the family's
rules); everything in between is left to XLA's sharding propagation. When a parameter is split
over the same 'fsdp' axis as the batch, propagation has to choose between gathering the weight
and gathering the activations, and it does not always choose the weight: compiled for the music
transformer at 100M parameters on 8 devices (`bench/scale_plan.py`), the LoRA step all-gathered
whole [batch, 2048, 3072] activations, computed every token on every device and all-reduced
the partial sums, 3.4x the model's FLOPs per device. Pinning the input and output of every
dense and convolution layer to "dimension 0 split over the batch axes, the rest free" leaves
propagation only the FSDP answer (gather the weight shard, compute the local batch), and keeps
the 'model' axis free for tensor-parallel rules.

The CPU blockwise attention kernel, whose chunks slice the batch, is told the same split
(`attention.batch_split`) and runs per device on its own rows.

The pin applies to arrays whose leading dimension is the step's global micro-batch size, the
batch dimension in every family; anything else passes untouched. With one data-parallel device
nothing is added to the program.
"""

import contextlib
from typing import Iterator

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lora_jax.models import attention
from lora_jax.train import mesh as mesh_lib

_PINNED = (nn.Dense, nn.Conv, nn.ConvTranspose)


@contextlib.contextmanager
def batch_split(mesh: Mesh | None, batch_size: int) -> Iterator[None]:
  """Within this context (at trace time), layer inputs and outputs of `batch_size` rows are
  constrained to the batch sharding of `mesh`."""
  if mesh is None or mesh_lib.data_parallel_size(mesh) == 1:
    yield
    return

  def pin(x):
    if not isinstance(x, jax.Array) or x.ndim < 2 or x.shape[0] != batch_size:
      return x
    rest = (PartitionSpec.UNCONSTRAINED,) * (x.ndim - 1)
    spec = PartitionSpec(mesh_lib.BATCH_AXES, *rest)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

  def interceptor(next_fn, args, kwargs, context):
    if not (isinstance(context.module, _PINNED) and context.method_name == "__call__" and args):
      return next_fn(*args, **kwargs)
    return pin(next_fn(pin(args[0]), *args[1:], **kwargs))

  with nn.intercept_methods(interceptor), attention.batch_split(
      mesh, mesh_lib.BATCH_AXES, batch_size, heads_axis="model"):
    yield
