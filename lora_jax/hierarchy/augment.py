"""Velocity and program augmentation of the base's training windows, on the tokens themselves.

The corpus scores carry no dynamics (every note at velocity 80) and one General MIDI program per
genre, so a base trained on them alone has never read most Velocity and Program tokens: an
ordinary user's file, with its own dynamics and instruments, then pays ~27 bits per unseen
Velocity token. Each augmented copy of a window rewrites, on the token ids (no MIDI is re-read):
  velocity  a per-window curve: the window's own dynamics (flat for the corpus, played for the
            performances) scaled by `velocity_spread`, centred on a random level, plus a linear
            crescendo or diminuendo across the window and per-note jitter; clipped to bins
            1..n_velocity_bins-1 (bin 0 is a silent note).
  program   with probability `program_remap`, the window's distinct melodic programs are mapped to
            new ones: half the time within their General MIDI family (violin -> viola, choir ->
            voice oohs), else to any melodic program. The map is order-preserving (sorted old
            programs to sorted new ones) because the tokenizer writes a position's notes sorted
            by program: a shuffled map would teach an order real files never show. Drums stay.
Only the train split is augmented; validation and test windows are the files as written.

With `concat_short`, consecutive windows shorter than the window length share one window
(BOS piece EOS BOS piece EOS ...): a 1,024-token window would otherwise hold one 300-token folk
song and 700 tokens of padding that cost as much compute as music. The base's train and
validation windows are concatenated; test windows (the NLL tables) never are.
"""

import dataclasses

import numpy as np

from lora_jax.data import midi_tokenizer

FAMILY = 8  # General MIDI programs come in families of 8 (pianos, organs, guitars, strings...)


@dataclasses.dataclass(frozen=True)
class AugmentSettings:
  """How many augmented copies of each training window, and how they vary."""

  copies: int  # augmented copies added beside each original window; 0 turns augmentation off
  seed: int
  velocity_centre: tuple[int, int]  # bins: range of a copy's mean velocity level
  velocity_spread: tuple[float, float]  # factor on the window's own deviations from its mean
  velocity_ramp: float  # bins: largest rise or fall from the window's start to its end
  velocity_jitter: float  # bins: largest standard deviation of per-note noise
  program_remap: float  # probability that a copy's programs are remapped
  concat_short: bool  # short windows share one window (train and validation of the base)

  def __post_init__(self):
    if self.copies < 0:
      raise ValueError(f"augment copies {self.copies} must be >= 0")
    if not 0.0 <= self.program_remap <= 1.0:
      raise ValueError(f"augment program_remap {self.program_remap} is not in [0, 1]")
    lo, hi = self.velocity_centre
    if not 0 <= lo <= hi:
      raise ValueError(f"augment velocity_centre {self.velocity_centre} is not a range of bins")


def _new_programs(old: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  if rng.random() < 0.5:  # within each program's family
    new = (old // FAMILY) * FAMILY + rng.integers(0, FAMILY, size=len(old))
  else:
    new = rng.integers(0, 128, size=len(old))
  if len(np.unique(new)) != len(new):  # two parts must stay two programs
    new = np.sort(rng.choice(128, size=len(old), replace=False))
  return np.sort(new)


def augment_window(tokens_T: np.ndarray, mask_T: np.ndarray, settings: AugmentSettings,
                   tokenizer: midi_tokenizer.MidiTokenizer,
                   rng: np.random.Generator) -> np.ndarray:
  """One augmented copy of a window's tokens (padding untouched)."""
  ids = tokenizer.ids
  n_bins = tokenizer.config.n_velocity_bins
  vel0 = ids["Velocity_0"]
  out = tokens_T.copy()
  is_vel = mask_T.astype(bool) & (out >= vel0) & (out < vel0 + n_bins)
  where = np.flatnonzero(is_vel)
  if len(where):
    bins = (out[where] - vel0).astype(np.float64)
    lo, hi = settings.velocity_centre
    centre = rng.uniform(lo, hi)
    spread = rng.uniform(*settings.velocity_spread)
    ramp = rng.uniform(-settings.velocity_ramp, settings.velocity_ramp)
    jitter = rng.uniform(0.0, settings.velocity_jitter)
    along = where / max(1, len(out) - 1) - 0.5  # -0.5 at the window's start, 0.5 at its end
    new = (centre + spread * (bins - bins.mean()) + ramp * along
           + rng.normal(0.0, 1.0, size=len(where)) * jitter)
    out[where] = vel0 + np.clip(np.rint(new), 1, n_bins - 1).astype(out.dtype)
  if rng.random() < settings.program_remap:
    prog0 = ids["Program_0"]
    is_prog = mask_T.astype(bool) & (out >= prog0) & (out < prog0 + 128)
    old = np.unique(out[is_prog] - prog0)
    if len(old):
      table = dict(zip(old.tolist(), _new_programs(old, rng).tolist()))
      progs = np.flatnonzero(is_prog)
      out[progs] = prog0 + np.array([table[int(p)] for p in out[progs] - prog0], out.dtype)
  return out


def concat_short(tokens_NxT: np.ndarray, mask_NxT: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Consecutive windows packed into as few rows as fit, in order; a longer one stays alone."""
  seq_len = tokens_NxT.shape[1]
  rows: list[list[int]] = []
  for tokens_T, mask_T in zip(tokens_NxT, mask_NxT):
    real = tokens_T[mask_T.astype(bool)].tolist()
    if rows and len(rows[-1]) + len(real) <= seq_len:
      rows[-1] += real
    else:
      rows.append(real)
  out = np.zeros((len(rows), seq_len), tokens_NxT.dtype)
  mask = np.zeros((len(rows), seq_len), mask_NxT.dtype)
  for r, row in enumerate(rows):
    out[r, :len(row)] = row
    mask[r, :len(row)] = 1
  return out, mask


def augment_windows(tokens_NxT: np.ndarray, mask_NxT: np.ndarray, settings: AugmentSettings,
                    tokenizer: midi_tokenizer.MidiTokenizer) -> tuple[np.ndarray, np.ndarray]:
  """The windows (concatenated if asked) and `settings.copies` augmented copies of each."""
  if settings.concat_short:
    tokens_NxT, mask_NxT = concat_short(tokens_NxT, mask_NxT)
  rng = np.random.default_rng(settings.seed)
  tokens = [tokens_NxT]
  for _ in range(settings.copies):
    tokens.append(np.stack([augment_window(t, m, settings, tokenizer, rng)
                            for t, m in zip(tokens_NxT, mask_NxT)]))
  return np.concatenate(tokens), np.concatenate([mask_NxT] * (settings.copies + 1))
