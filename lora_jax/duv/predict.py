"""Whole tracks through the PhraseTransformer in a few large jitted batches.

A track of n notes is cut into phrase windows the way the model saw them in training: a track of
at most max_len notes is one window; a longer one is cut into overlapping windows of max_len
notes, and each note takes its prediction from a window where it has at least `max_len / 8`
notes of context on both sides (except at the track's ends). The overlap costs 4/3 of the
notes' compute, against 2 for windows every max_len / 2 notes.

Shapes are bucketed so a whole MIDI file (or many) costs a handful of compilations that later
calls reuse: window lengths are powers of two (at least `MIN_WINDOW`, at most max_len); windows of
one length go in batches of `NOTES_PER_CALL // length` rows, the remainder in batches whose row
counts are the powers of two it is the sum of (so no batch is mostly padding). Padding notes are
masked out; the model's outputs at real notes do not depend on them. Every batch is dispatched
before any is read back."""

import functools
from typing import Any, Sequence

import jax
import numpy as np

from lora_jax import errors, lora
from lora_jax.duv.bundle import DuvModel
from lora_jax.models.phrase_transformer import PhraseTransformer

MIN_WINDOW = 16
NOTES_PER_CALL = 8192


class PredictionError(errors.UserError, RuntimeError):
  """The model produced something that must not reach a MIDI file."""


@functools.partial(jax.jit, static_argnames=("module",))
def _forward(module: PhraseTransformer, params: Any, adapters: tuple, inputs_BxLxC, mask_BxL,
             written_dur_BxL):
  actives = [lora.Active(a, 1.0) for a in adapters]
  out = lora.apply(module, params, actives, inputs_BxLxC, mask_BxL, written_dur_BxL)
  return out["velocity"], out["dur_beats"]


def _pow2_at_least(n: int) -> int:
  return 1 << max(0, int(n - 1).bit_length())


def _batches(n: int, rows: int) -> list[tuple[int, int]]:
  """(first item, row count) of the batches holding n items: full ones, then powers of two."""
  out = [(first, rows) for first in range(0, n - n % rows, rows)]
  first = n - n % rows
  for bit in reversed(range((n % rows).bit_length())):
    if (n % rows) >> bit & 1:
      out.append((first, 1 << bit))
      first += 1 << bit
  return out


def window_length(n_notes: int, max_len: int) -> int:
  """Bucketed window length for a track of `n_notes`."""
  return min(max(MIN_WINDOW, _pow2_at_least(n_notes)), max_len)


def windows(n_notes: int, max_len: int) -> tuple[int, np.ndarray, np.ndarray]:
  """(window length w, window starts [K], per note (window index, position in it) [n, 2])."""
  w = window_length(n_notes, max_len)
  if n_notes <= w:
    return w, np.zeros(1, np.int64), np.stack([np.zeros(n_notes, np.int64),
                                               np.arange(n_notes)], axis=1)
  context = w // 8
  hop = w - 2 * context
  n_windows = -(-(n_notes - w) // hop) + 1  # the last window reaches the end
  starts = np.arange(n_windows) * hop
  note = np.arange(n_notes)
  k = np.clip((note - context) // hop, 0, n_windows - 1)
  return w, starts, np.stack([k, note - starts[k]], axis=1)


def predict(model: DuvModel, tracks: Sequence[np.ndarray], written_durs: Sequence[np.ndarray],
            use_adapter: bool = True) -> list[tuple[np.ndarray, np.ndarray]]:
  """(velocity [n], dur_beats [n]) float64 per track of scaled features [n, C] and written
  durations [n] (beats, unscaled).

  With `use_adapter` False the base alone runs even when the model holds an adapter (for
  before/after comparisons); an adapter the forward does not use raises, never passes silently.
  """
  cfg = model.config
  adapters = (model.adapter.adapter,) if (use_adapter and model.adapter is not None) else ()
  by_length: dict[int, list[tuple[int, int]]] = {}  # w -> [(track, start)]
  layouts = []
  if len(written_durs) != len(tracks):
    raise ValueError(f"{len(written_durs)} written-duration arrays for {len(tracks)} tracks")
  for t, (x, written) in enumerate(zip(tracks, written_durs)):
    if x.ndim != 2 or x.shape[1] != cfg.n_features or len(x) == 0:
      raise ValueError(f"track {t} has features of shape {x.shape}, expected [n >= 1, "
                       f"{cfg.n_features}]")
    if np.shape(written) != (len(x),):
      raise ValueError(f"track {t} has {len(x)} notes but written durations of shape "
                       f"{np.shape(written)}")
    w, starts, where = windows(len(x), cfg.max_len)
    base = len(by_length.setdefault(w, []))
    by_length[w].extend((t, int(s)) for s in starts)
    layouts.append((w, base, where))

  pending = []  # (w, first window index, device outputs)
  for w, items in sorted(by_length.items()):
    for first, b in _batches(len(items), max(1, NOTES_PER_CALL // w)):
      chunk = items[first:first + b]
      inputs = np.zeros((b, w, cfg.n_features), np.float32)
      mask = np.zeros((b, w), bool)
      written = np.zeros((b, w), np.float32)
      for i, (t, s) in enumerate(chunk):
        piece = tracks[t][s:s + w]
        inputs[i, :len(piece)] = piece
        mask[i, :len(piece)] = True
        written[i, :len(piece)] = written_durs[t][s:s + w]
      pending.append((w, first, _forward(model.module, model.params, adapters, inputs, mask,
                                         written)))

  outputs: dict[int, list[tuple[int, np.ndarray, np.ndarray]]] = {}
  for w, first, (vel, dur) in pending:
    outputs.setdefault(w, []).append((first, np.asarray(vel), np.asarray(dur)))
  stacked = {w: (np.concatenate([v for _, v, _ in sorted(parts, key=lambda p: p[0])]),
                 np.concatenate([d for _, _, d in sorted(parts, key=lambda p: p[0])]))
             for w, parts in outputs.items()}
  result = []
  for t, (w, base, where) in enumerate(layouts):
    vel_all, dur_all = stacked[w]
    vel = vel_all[base + where[:, 0], where[:, 1]].astype(np.float64)
    dur = dur_all[base + where[:, 0], where[:, 1]].astype(np.float64)
    if not (np.isfinite(vel).all() and np.isfinite(dur).all()):
      raise PredictionError(f"{model.source}: non-finite predictions for track {t} "
                            f"({int((~np.isfinite(vel)).sum())} velocities, "
                            f"{int((~np.isfinite(dur)).sum())} durations)")
    result.append((vel, dur))
  return result
