"""The surface through which a model family plugs into the one training loop.

A family is data, not a subclass: a frozen `Family` names the Flax model, the batch it eats, how the
batch feeds the model, the loss, and how its parameters are sharded. Everything else (LoRA
injection, precision, sharding of the batch, optimiser, checkpoints, metrics) is the loop's.

The contract a family's model keeps:
  - `model.apply({'params': p}, *[batch[k] for k in inputs], deterministic=bool,
    rngs={'dropout': key})` runs the forward; every linear layer LoRA may adapt is an `nn.Dense`.
  - `prepare(batch, key) -> batch`, if given, runs inside the jitted step before the forward and
    is the one place a family draws randomness of its own (a diffusion family draws the time
    t ~ U(0, 1) and the noise there and returns the batch with the noised input x_t, t and the
    target added). `inputs` and `loss_fn` read the batch it returns. The train step gives it a
    key of its own per micro-batch, fold_in(micro-batch key, PREPARE), a stream apart from
    dropout's, so the seed reproduces it and resume is bit-exact; the eval step gives it
    fold_in(key(EVAL_SEED), validation batch index), the same at every evaluation and in every
    run, so a validation loss is deterministic and comparable across runs. Without `prepare` the
    step draws nothing extra: families that need no randomness keep their results bit for bit.
    With `prepare_in_eval` False the eval step feeds the data batch as it is: for randomness
    that belongs to training alone (condition dropout for classifier-free guidance), so that the
    validation loss is the model's on the inputs as given.
  - `loss_fn(outputs, batch)` is pure and returns a float32 scalar loss (a mean over what the
    batch holds) and a dict of float32 scalar metrics; it never hides an empty batch behind a zero
    (divide by the real count: an empty mask gives NaN, which the loop counts and skips).
  - `loss_weight(batch)`, if given, is the count that mean divides by; accumulation weights
    micro-batches by it.
  - `batch_spec` gives each batch array's per-example shape and dtype (no batch axis) and, for
    ids, the range their values must lie in (token ids below the vocabulary size: JAX clamps an
    out-of-range gather instead of failing); the loop checks data against it when it loads the
    data, and initialises the model from it.
  - `partition_rules` are (regex, PartitionSpec) over dotted parameter paths
    (`blocks.0.attn.q_proj.kernel`, see `lora_jax.tree_paths`); the first rule that `re.search`es
    a path wins, every parameter must match a rule and every rule must match a parameter. Axis
    names are the mesh's: 'data', 'fsdp', 'model'.

To add a family, write `lora_jax/families/<name>.py` with a frozen model-config dataclass and
`make(model_config, compute_dtype) -> Family`, and list it in `lora_jax/families/__init__.py`.
"""

import dataclasses
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from lora_jax import errors

Batch = Mapping[str, jax.Array]
LossFn = Callable[[Any, Batch], tuple[jax.Array, dict[str, jax.Array]]]


@dataclasses.dataclass(frozen=True)
class Example:
  """Shape (without the batch axis) and dtype of one batch array."""

  shape: tuple[int, ...]
  dtype: str
  bounds: tuple[int, int] | None = None  # [low, high) of the values, e.g. (0, vocab_size)
  bounds_reason: str = ""  # what `high` is, for the error: "vocab_size 389"


@dataclasses.dataclass(frozen=True)
class Family:
  """One model family: model, batch, loss, sharding. See the module docstring for the contract."""

  name: str  # recorded in adapters and checkpoints, e.g. 'music_lm'
  model: nn.Module
  batch_spec: Mapping[str, Example]  # every array a batch holds
  inputs: tuple[str, ...]  # batch keys passed positionally to the model, in order
  loss_fn: LossFn
  partition_rules: tuple[tuple[str, PartitionSpec], ...]
  # Optional: `synthetic(n, seed)` -> a learnable data set of n examples shaped like batch_spec,
  # for smoke runs and tests (`config.data.synthetic_examples`).
  synthetic: Callable[[int, int], dict[str, np.ndarray]] | None = None
  # Optional: `loss_weight(batch)` -> how many things the loss averages over (target tokens,
  # notes). With gradient accumulation the step weights each micro-batch by it, so the update is
  # the gradient of the whole batch's mean, not a mean of micro-batch means. None: equal weights.
  loss_weight: Callable[[Batch], jax.Array] | None = None
  # Optional: `prepare(batch, key)` -> the batch the model and loss read, drawn with `key` (see
  # the module docstring). None: the data batch is fed as it is.
  prepare: Callable[[Batch, jax.Array], Batch] | None = None
  # Whether evaluation prepares too (diffusion time and noise) or reads the data batch as it is
  # (training-only randomness such as condition dropout).
  prepare_in_eval: bool = True
  # Optional: what a whole-model weight file of this family records about the model (its size),
  # written into the export of a full fine-tune or a ReLoRA run, so the converters that read the
  # file (lora_jax.interop.model_size) need no config, as for the base files they already read.
  weights_metadata: Mapping[str, str] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    # With `prepare`, inputs may be arrays it makes; `model_args` checks them when traced.
    missing = [k for k in self.inputs if k not in self.batch_spec]
    if missing and self.prepare is None:
      raise ValueError(f"family {self.name}: model inputs {missing} are not in its batch_spec "
                       f"{sorted(self.batch_spec)}")

  def abstract_batch(self, *leading: int) -> dict[str, jax.ShapeDtypeStruct]:
    """The batch's abstract arrays with `leading` axes, e.g. (batch,) or (accum, micro)."""
    return {k: jax.ShapeDtypeStruct(tuple(leading) + e.shape, np.dtype(e.dtype))
            for k, e in self.batch_spec.items()}

  def model_args(self, batch: Batch) -> tuple:
    """The model's positional arguments taken from a (prepared) batch."""
    missing = [k for k in self.inputs if k not in batch]
    if missing:
      raise ValueError(f"family {self.name}: model inputs {missing} are not in the "
                       f"{'prepared ' if self.prepare else ''}batch, which holds {sorted(batch)}")
    return tuple(batch[k] for k in self.inputs)

  def init_args(self) -> tuple:
    """Model arguments of one all-zero example (prepared with a fixed key): what init traces."""
    batch = {k: jnp.zeros(s.shape, s.dtype) for k, s in self.abstract_batch(1).items()}
    if self.prepare is not None:
      batch = self.prepare(batch, jax.random.key(0))
    return self.model_args(batch)

  def check_arrays(self, arrays: Mapping[str, np.ndarray], source: str) -> None:
    """Raise unless `arrays` holds exactly the batch_spec's keys with its shapes and dtypes."""
    if set(arrays) != set(self.batch_spec):
      raise ValueError(f"{source} holds arrays {sorted(arrays)}, family {self.name} needs "
                       f"{sorted(self.batch_spec)}")
    for k, e in self.batch_spec.items():
      a = arrays[k]
      if tuple(a.shape[1:]) != e.shape or a.dtype != np.dtype(e.dtype):
        raise ValueError(f"{source}: array {k!r} is {a.dtype}{list(a.shape)}, family {self.name} "
                         f"needs {e.dtype}[N, {', '.join(map(str, e.shape))}]")
      if e.bounds is not None and a.size:
        low, high = e.bounds
        bad = np.argwhere((a < low) | (a >= high))
        if len(bad):
          where = tuple(int(i) for i in bad[0])
          raise errors.UserError(
              f"{source}: array {k!r} holds {a[where]} at {list(where)} ({len(bad)} of {a.size} "
              f"values out of range); its values must lie in [{low}, {high})"
              + (f" ({e.bounds_reason})" if e.bounds_reason else ""))
