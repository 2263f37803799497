"""Precision policies and the dynamic loss scale float16 needs.

  float32   compute, trainable and frozen parameters in float32.
  bfloat16  compute in bfloat16; trainable parameters (LoRA factors, or the whole model) stay
            float32, so small updates are not rounded away; a frozen base may be stored in
            bfloat16 (`training.base_dtype`).
  float16   compute in float16 with a dynamic loss scale: the loss is multiplied by the scale
            before differentiation and the gradients divided after; a non-finite gradient halves
            the scale and skips the step, and `GROWTH_INTERVAL` finite steps in a row double it.

No maintained mixed-precision library is installed (jmp is archived), so the scaler is here;
it is a pytree carried in the train state, so it checkpoints and resumes with everything else.
"""

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp

INITIAL_SCALE = 2.0**15
GROWTH_INTERVAL = 2000
MIN_SCALE = 1.0


@dataclasses.dataclass(frozen=True)
class Policy:
  """Dtypes of one run."""

  compute_dtype: str
  param_dtype: str  # trainable parameters
  base_dtype: str  # a frozen base's storage
  dynamic_loss_scale: bool


def policy(precision: str, base_dtype: str) -> Policy:
  """The policy named by `training.precision`, with the frozen base stored as `base_dtype`."""
  if precision not in ("float32", "bfloat16", "float16"):
    raise ValueError(f"precision must be 'float32', 'bfloat16' or 'float16', got {precision!r}")
  if base_dtype not in ("float32", "bfloat16"):
    raise ValueError(f"base_dtype must be 'float32' or 'bfloat16', got {base_dtype!r}")
  return Policy(precision, "float32", base_dtype, precision == "float16")


@flax.struct.dataclass
class LossScale:
  """The current loss scale and how many finite steps it has survived."""

  scale: jax.Array  # float32 scalar; 1 and never changed without a dynamic scale
  good_steps: jax.Array  # int32 scalar

  @classmethod
  def create(cls, dynamic: bool) -> "LossScale":
    return cls(jnp.asarray(INITIAL_SCALE if dynamic else 1.0, jnp.float32),
               jnp.zeros((), jnp.int32))

  def scale_loss(self, loss: jax.Array) -> jax.Array:
    return loss * self.scale

  def unscale(self, grads):
    inv = 1.0 / self.scale
    return jax.tree.map(lambda g: g * inv.astype(g.dtype), grads)

  def adjust(self, finite: jax.Array, dynamic: bool) -> "LossScale":
    """The scale after a step whose gradients were (not) all finite."""
    if not dynamic:
      return self
    grown = self.good_steps + 1 >= GROWTH_INTERVAL
    scale = jnp.where(finite, jnp.where(grown, self.scale * 2.0, self.scale),
                      jnp.maximum(self.scale * 0.5, MIN_SCALE))
    good = jnp.where(finite & ~grown, self.good_steps + 1, 0)
    return LossScale(scale.astype(jnp.float32), good.astype(jnp.int32))


def all_finite(tree) -> jax.Array:
  """True where every element of every leaf is finite."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.stack(leaves).all() if leaves else jnp.asarray(True)
