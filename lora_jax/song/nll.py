"""Held-out NLL of the song LM per stream (mixed, vocal, accompaniment), and a unigram baseline.

Scored on the family's windows exactly as training scores them (`models/song/loss.py`: padding
never counts, a window that ends its song predicts end of sequence, cut-off delayed targets are
masked), but summed over every target of every window, not the loop's mean of per-batch means:
the last batch is padded with windows of length 0 and no song end, whose mask is all zero.

The baseline is what a model that ignores all context earns: each stream's code frequencies in
the training windows (add-one smoothed over the code_size + 1 outcomes, end of sequence
included), scored on the same targets.
"""

import dataclasses
import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lora_jax import lora
from lora_jax.families import song_lm as song_family
from lora_jax.models.song import loss as song_loss

EVAL_BATCH = 8


@dataclasses.dataclass(frozen=True)
class StreamNll:
  """Summed NLL (nats) and scored targets per stream."""

  nats: tuple[float, ...]  # [K]
  tokens: tuple[int, ...]  # [K]

  def bits_per_token(self) -> tuple[float, ...]:
    return tuple(n / t / math.log(2.0) for n, t in zip(self.nats, self.tokens))

  def total_bits_per_token(self) -> float:
    return sum(self.nats) / sum(self.tokens) / math.log(2.0)


@functools.partial(jax.jit, static_argnames=("model", "delays"))
def _batch_nll(model: nn.Module, params: Any, adapters: tuple, batch: dict,
               delays: tuple[int, ...]):
  actives = [lora.Active(a, 1.0) for a in adapters]
  inputs = [batch[k] for k in ("codes", "length", "song_end", "lyrics", "sections", "style")]
  if "prompt" in batch:
    inputs.append(batch["prompt"])
  out = lora.apply(model, params, actives, *inputs)
  return song_loss.stream_nll(out["logits"], out["codes"], out["mask"], delays)


def _padded_batches(arrays: dict[str, np.ndarray]):
  n = len(arrays["length"])
  if n == 0:
    raise ValueError("no windows to score")
  for start in range(0, n, EVAL_BATCH):
    batch = {k: np.asarray(v[start:start + EVAL_BATCH], np.int32) for k, v in arrays.items()}
    pad = EVAL_BATCH - len(batch["length"])
    if pad:  # length 0, no song end: every target of these rows is masked
      batch = {k: np.concatenate([v, np.zeros((pad, *v.shape[1:]), np.int32)])
               for k, v in batch.items()}
    yield batch


def stream_nll(config: song_family.SongConfig, params: Any, arrays: dict[str, np.ndarray],
               adapters: Sequence[lora.Adapter] = ()) -> StreamNll:
  """NLL of the model `params` (with `adapters` at weight 1) on the family's window arrays."""
  model = song_family.make(config, "float32").model
  outs = [_batch_nll(model, params, tuple(adapters), b, config.delays)
          for b in _padded_batches(arrays)]
  host = jax.device_get(outs)
  nats = np.sum([np.asarray(o[0], np.float64) for o in host], axis=0)
  counts = np.sum([np.asarray(o[1], np.float64) for o in host], axis=0)
  if not np.all(counts > 0):
    raise ValueError(f"a stream has no scored targets: counts {counts.tolist()}")
  return StreamNll(tuple(float(x) for x in nats), tuple(int(c) for c in counts))


def targets(config: song_family.SongConfig, arrays: dict[str, np.ndarray]
            ) -> tuple[np.ndarray, np.ndarray]:
  """(target codes [N, K, T], bool mask [N, K, T]) as the loss builds them."""
  ends = np.asarray(arrays["song_end"]) > 0
  codes, frames = song_loss.targets(jnp.asarray(arrays["codes"]), jnp.asarray(arrays["length"]),
                                    ends, code_size=config.code_size)
  mask = song_loss.target_mask(frames, ends, config.delays)
  return np.asarray(codes), np.asarray(mask)


def unigram_nll(config: song_family.SongConfig, train: dict[str, np.ndarray],
                held_out: dict[str, np.ndarray]) -> StreamNll:
  """Each stream's add-one smoothed code frequencies in `train`, scored on `held_out`."""
  outcomes = config.code_size + 1  # the codes and end of sequence
  train_codes, train_mask = targets(config, train)
  codes, mask = targets(config, held_out)
  nats, tokens = [], []
  for q in range(config.code_depth):
    counts = np.bincount(train_codes[:, q][train_mask[:, q]], minlength=outcomes)[:outcomes]
    logp = np.log((counts + 1.0) / (counts.sum() + outcomes))
    seen = codes[:, q][mask[:, q]]
    nats.append(float(-logp[seen].sum()))
    tokens.append(int(seen.size))
  return StreamNll(tuple(nats), tuple(tokens))


def load_windows(path: str) -> dict[str, np.ndarray]:
  """The arrays of a windows .npz written by `lora_jax.song.prepare`."""
  with np.load(path) as f:
    return {k: f[k] for k in f.files}
