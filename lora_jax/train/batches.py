"""In-memory batches over a dict of numpy arrays, shuffled per epoch and resumable.

The order of epoch e is a permutation drawn from (seed, e) alone, so a position (epoch, index)
is the whole iterator state: a resumed run draws exactly the batches the interrupted one would
have. The last partial batch of an epoch is dropped, so every step sees a full batch.
"""

import dataclasses
from typing import Iterator, Mapping

import numpy as np

from lora_jax.train.config import DataConfig
from lora_jax.train.family import Family


@dataclasses.dataclass(frozen=True)
class Position:
  """Where the iterator stands: batches already taken from epoch `epoch`."""

  epoch: int
  index: int


def check_fills(arrays: Mapping[str, np.ndarray], batch_size: int) -> int:
  """Batches per epoch; a ValueError if the examples do not fill one."""
  size = len(next(iter(arrays.values())))
  if size < batch_size:
    raise ValueError(f"{size} examples do not fill one batch of {batch_size}")
  return size // batch_size


class BatchIterator:
  """Yields (batch, its epoch, whether it ended the epoch) forever; `position` is what follows."""

  def __init__(self, arrays: Mapping[str, np.ndarray], batch_size: int, seed: int,
               position: Position = Position(0, 0)):
    sizes = {k: len(v) for k, v in arrays.items()}
    if len(set(sizes.values())) != 1:
      raise ValueError(f"batch arrays differ in length: {sizes}")
    self.arrays = dict(arrays)
    self.size = next(iter(sizes.values()))
    self.batch_size = batch_size
    self.seed = seed
    self.steps_per_epoch = check_fills(self.arrays, batch_size)
    if not 0 <= position.index < self.steps_per_epoch:
      raise ValueError(f"position {position} is outside an epoch of {self.steps_per_epoch} steps")
    self.position = position
    self._order = self._permutation(position.epoch)

  def _permutation(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self.seed, epoch]).permutation(self.size)

  def __iter__(self) -> Iterator[tuple[dict[str, np.ndarray], int, bool]]:
    return self

  def __next__(self) -> tuple[dict[str, np.ndarray], int, bool]:
    batch_epoch = epoch = self.position.epoch
    index = self.position.index
    rows = self._order[index * self.batch_size:(index + 1) * self.batch_size]
    batch = {k: v[rows] for k, v in self.arrays.items()}
    index += 1
    end_of_epoch = index == self.steps_per_epoch
    if end_of_epoch:
      epoch, index = epoch + 1, 0
      self._order = self._permutation(epoch)
    self.position = Position(epoch, index)
    return batch, batch_epoch, end_of_epoch


def eval_batches(arrays: Mapping[str, np.ndarray], batch_size: int) -> list[dict]:
  """The validation set in order, in full batches (the remainder is dropped); views, not copies."""
  size = len(next(iter(arrays.values())))
  if size < batch_size:
    raise ValueError(f"validation set of {size} examples does not fill one eval batch of "
                     f"{batch_size}")
  return [{k: v[start:start + batch_size] for k, v in arrays.items()}
          for start in range(0, size - batch_size + 1, batch_size)]


def micro_batches(batch: Mapping[str, np.ndarray], accum: int) -> dict[str, np.ndarray]:
  """[B, ...] -> [accum, B / accum, ...]."""
  out = {}
  for k, v in batch.items():
    if len(v) % accum:
      raise ValueError(f"batch of {len(v)} does not split into {accum} micro-batches")
    out[k] = v.reshape((accum, len(v) // accum) + v.shape[1:])
  return out


def _load_npz(path: str) -> dict[str, np.ndarray]:
  with np.load(path, allow_pickle=False) as f:
    return {k: f[k] for k in f.files}


def load(config: DataConfig, family: Family, seed: int) -> tuple[dict, dict]:
  """(train arrays, validation arrays) from the data config, checked against the family."""
  if config.path:
    train = _load_npz(config.path)
    source = config.path
  else:
    if family.synthetic is None:
      raise ValueError(f"family {family.name} has no synthetic data; set data.path")
    train = family.synthetic(config.synthetic_examples, seed)
    source = f"synthetic {family.name} data"
  family.check_arrays(train, source)
  if config.val_path:
    val = _load_npz(config.val_path)
    family.check_arrays(val, config.val_path)
    return train, val
  size = len(next(iter(train.values())))
  n_val = int(round(size * config.val_fraction))
  if not 0 < n_val < size:
    raise ValueError(f"data.val_fraction {config.val_fraction} of {size} examples leaves "
                     f"{n_val} for validation; give data.val_path or another fraction")
  # A fixed permutation before the split, so a sorted file does not validate on its tail only.
  order = np.random.default_rng([seed, 2**31 - 1]).permutation(size)
  val_rows, train_rows = order[:n_val], order[n_val:]
  return ({k: v[train_rows] for k, v in train.items()},
          {k: v[val_rows] for k, v in train.items()})
