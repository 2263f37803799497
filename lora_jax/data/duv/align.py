"""Aligning a performance to its score note by note, when both are plain note lists (two MIDI files).

Two passes, the shape of score-to-performance matchers (the note matchers behind .match files):
1. Coarse: dynamic time warping between the score's onset groups (the pitches written at one
   onset) and the performed notes in onset order. A performed note costs 0 against a group that
   holds its pitch and 1 against one that does not, plus `DIAGONAL_WEIGHT` times its distance from
   the diagonal (the piece at one tempo), which only breaks ties between repeats of a figure. The
   path's zero-cost cells are anchors (score beat, performed second).
2. Fine: the anchors' median time per score onset, kept where time moves forward, is a piecewise
   linear tempo map. Through it, each pitch's written and performed notes are aligned in order
   (Needleman-Wunsch) by their distance in beats; a pair further apart than `max_offset_beats` is
   never matched. The map is refitted from these matches and the pass repeated with the tighter
   `refine_offset_beats`.
A note left over is unmatched, never forced onto a wrong partner: a performed one is an insertion
(an ornament, a wrong note), a written one a deletion (an omission).
"""

import dataclasses

import numpy as np

from lora_jax import errors

DIAGONAL_WEIGHT = 0.1  # per performed note, per unit of distance from the diagonal (0 to 1)
MAX_DTW_CELLS = 150_000_000  # score onsets x performed notes, one byte each
_DIAGONAL, _DOWN, _RIGHT = 0, 1, 2


class AlignError(errors.UserError):
  """A pair of note lists that cannot be aligned; the message says why, with the sizes."""


@dataclasses.dataclass(frozen=True)
class AlignConfig:
  max_offset_beats: float = 1.0  # first fine pass, against the DTW tempo map
  refine_offset_beats: float = 0.5  # later passes, against the map refitted from matches
  refinements: int = 2


@dataclasses.dataclass(frozen=True)
class Alignment:
  """Matched pairs as indices into the score's and the performance's note arrays."""
  score_index: np.ndarray  # [K] int, increasing in score onset
  perf_index: np.ndarray  # [K] int
  unmatched_score: np.ndarray  # [S - K] int, deletions
  unmatched_perf: np.ndarray  # [P - K] int, insertions


def score_beats_at(anchor_beats: np.ndarray, anchor_sec: np.ndarray,
                   seconds: np.ndarray) -> np.ndarray:
  """Score beats at performed times: piecewise linear through the anchors (median time per beat,
  kept where it moves forward), extended at both ends by the outermost segments' tempo."""
  beats = np.unique(anchor_beats)
  times = np.array([np.median(anchor_sec[anchor_beats == b]) for b in beats])
  keep, last = [], -np.inf
  for i, t in enumerate(times):  # in score order; drop points that would run time backwards
    if t > last:
      keep.append(i)
      last = t
  times, beats = times[keep], beats[keep]
  if len(times) < 2:
    raise AlignError(f"the performance has {len(times)} distinct anchored onset times, "
                     f"a tempo map needs 2")
  out = np.interp(seconds, times, beats)
  lo = (beats[1] - beats[0]) / (times[1] - times[0])
  hi = (beats[-1] - beats[-2]) / (times[-1] - times[-2])
  out = np.where(seconds < times[0], beats[0] + (seconds - times[0]) * lo, out)
  return np.where(seconds > times[-1], beats[-1] + (seconds - times[-1]) * hi, out)


def _min_plus_row(step_cost: np.ndarray, entry: np.ndarray) -> np.ndarray:
  """D[j] = min(entry[j], D[j-1] + step_cost[j]) for all j at once: D[j] is the best over k <= j
  of entry[k] plus the steps k+1..j, a running minimum once the steps are summed."""
  steps = np.concatenate([[0.0], np.cumsum(step_cost[1:], dtype=np.float64)])
  return steps + np.minimum.accumulate(entry - steps)


def _dtw_anchors(score_onset: np.ndarray, score_pitch: np.ndarray, perf_onset: np.ndarray,
                 perf_pitch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(score beats, performed seconds) of the DTW path's cells where the pitch is written."""
  groups = np.unique(score_onset)
  order = np.argsort(perf_onset, kind="stable")
  n, m = len(groups), len(order)
  if n * m > MAX_DTW_CELLS:
    raise AlignError(f"{m:,} performed notes against {n:,} score onsets is {n * m:,} cells, more "
                     f"than the {MAX_DTW_CELLS:,} one alignment holds: split the piece")
  written = np.zeros((n, 128), dtype=bool)
  written[np.searchsorted(groups, score_onset), score_pitch] = True
  t = perf_onset[order]
  score_pos = (groups - groups[0]) / max(groups[-1] - groups[0], 1e-9)
  perf_pos = (t - t[0]) / max(t[-1] - t[0], 1e-9)
  # Only the previous row's totals are kept; each cell remembers its step (_DIAGONAL, _DOWN:
  # from the row above, _RIGHT: from the left), one byte a cell.
  step = np.empty((n, m), dtype=np.int8)
  prev = None
  for i in range(n):
    cost = (~written[i, perf_pitch[order]]).astype(np.float64)
    cost += DIAGONAL_WEIGHT * np.abs(perf_pos - score_pos[i])
    if prev is None:
      prev, step[0] = np.cumsum(cost), _RIGHT
      continue
    shifted = np.concatenate([[np.inf], prev[:-1]])
    entry = cost + np.minimum(prev, shifted)
    total = _min_plus_row(cost, entry)
    step[i] = np.where(total < entry - 1e-9, _RIGHT, np.where(shifted <= prev, _DIAGONAL, _DOWN))
    prev = total
  cells, i, j = [], n - 1, m - 1
  while True:
    cells.append((i, j))
    if i == 0 and j == 0:
      break
    if i == 0 or step[i, j] == _RIGHT:
      j -= 1
    elif step[i, j] == _DOWN or j == 0:
      i -= 1
    else:
      i, j = i - 1, j - 1
  rows, cols = np.array(cells).T
  hit = written[rows, perf_pitch[order][cols]]
  return groups[rows[hit]], t[cols[hit]]


def _match_sequences(written: np.ndarray, played: np.ndarray, max_offset: float
                     ) -> list[tuple[int, int]]:
  """Order-keeping pairs (i, j) of two sorted beat arrays of one pitch minimising the summed
  |written[i] - played[j]| plus max_offset / 2 per note left over (so no pair is > max_offset)."""
  gap = max_offset / 2
  a, b = len(written), len(played)
  dist = np.abs(written[:, None] - played[None, :])
  pair_cost = np.where(dist < max_offset, dist, np.inf)
  total = np.empty((a + 1, b + 1))
  total[0] = gap * np.arange(b + 1)
  for i in range(1, a + 1):
    entry = np.empty(b + 1)
    entry[0] = total[i - 1, 0] + gap
    entry[1:] = np.minimum(total[i - 1, :-1] + pair_cost[i - 1], total[i - 1, 1:] + gap)
    total[i] = _min_plus_row(np.full(b + 1, gap), entry)
  pairs, i, j = [], a, b
  while i > 0 and j > 0:
    if np.isclose(total[i, j], total[i - 1, j - 1] + pair_cost[i - 1, j - 1]):
      pairs.append((i - 1, j - 1))
      i, j = i - 1, j - 1
    elif np.isclose(total[i, j], total[i - 1, j] + gap):
      i -= 1
    else:
      j -= 1
  return pairs[::-1]


def _match_by_pitch(score_onset: np.ndarray, score_pitch: np.ndarray, perf_beats: np.ndarray,
                    perf_pitch: np.ndarray, max_offset: float) -> tuple[np.ndarray, np.ndarray]:
  score_index, perf_index = [], []
  for pitch in np.intersect1d(score_pitch, perf_pitch):
    s = np.flatnonzero(score_pitch == pitch)
    s = s[np.argsort(score_onset[s], kind="stable")]
    p = np.flatnonzero(perf_pitch == pitch)
    p = p[np.argsort(perf_beats[p], kind="stable")]
    for i, j in _match_sequences(score_onset[s], perf_beats[p], max_offset):
      score_index.append(s[i])
      perf_index.append(p[j])
  return np.array(score_index, dtype=np.int64), np.array(perf_index, dtype=np.int64)


def align(score_onset_beats: np.ndarray, score_pitch: np.ndarray, perf_onset_sec: np.ndarray,
          perf_pitch: np.ndarray, config: AlignConfig = AlignConfig()) -> Alignment:
  """Matches performed notes to written ones (same pitch); the rest left unmatched."""
  score_onset = np.asarray(score_onset_beats, dtype=np.float64)
  perf_onset = np.asarray(perf_onset_sec, dtype=np.float64)
  score_pitch, perf_pitch = np.asarray(score_pitch), np.asarray(perf_pitch)
  if len(np.unique(score_onset)) < 2 or len(np.unique(perf_onset)) < 2:
    raise AlignError(f"alignment needs 2 distinct onsets on each side; the score has "
                     f"{len(np.unique(score_onset))}, the performance {len(np.unique(perf_onset))}")
  anchor_beats, anchor_sec = _dtw_anchors(score_onset, score_pitch, perf_onset, perf_pitch)
  offsets = [config.max_offset_beats] + [config.refine_offset_beats] * config.refinements
  for max_offset in offsets:
    perf_beats = score_beats_at(anchor_beats, anchor_sec, perf_onset)
    score_index, perf_index = _match_by_pitch(score_onset, score_pitch, perf_beats, perf_pitch,
                                              max_offset)
    if len(score_index) < 2:
      raise AlignError(f"only {len(score_index)} of {len(score_onset)} written notes found a "
                       f"performed note of their pitch")
    anchor_beats, anchor_sec = score_onset[score_index], perf_onset[perf_index]
  order = np.lexsort((score_pitch[score_index], score_onset[score_index]))
  score_index, perf_index = score_index[order], perf_index[order]
  return Alignment(score_index, perf_index,
                   np.setdiff1d(np.arange(len(score_onset)), score_index),
                   np.setdiff1d(np.arange(len(perf_onset)), perf_index))
