"""Per-note input features for DUV humanisation (velocity + duration), in beat units.

Every feature is a function of the *written* notes only (onsets and durations in beats, pitch,
written velocity, the bar grid and section marks), never of the human performance, so a model
sees at inference exactly what it saw in training. Times are beats of the piece's beat grid:
pretty_midi's `get_beats()`/`get_downbeats()` for MIDI files, the score for .match files.

Onset groups: notes whose onsets are equal (within `ONSET_TOL_BEATS`) form one group (a chord).

Features, each a float per note:
  beat_pos       onset minus the latest downbeat at or before it, in beats: 0 on a downbeat,
                 1.5 for the "and" of beat 2. Negative for notes before the first downbeat.
  beat_frac      fractional part of the onset in beats, in [0, 1): 0 on the beat, 0.5 off-beat.
  pitch          MIDI pitch, 0-127.
  dur_beats      written duration in beats.
  prev_ioi       beats from the previous onset group to this note's group; 0 in the first group.
  next_ioi       beats from this note's group to the next onset group; 0 in the last group.
  is_downbeat    1 when the onset is on a downbeat, else 0.
  vel_norm       written velocity / 127 (constant for deadpan input).
  strum_dir_hint +1 for a chord (group of >= 2 notes) starting in the first half of a beat
                 (down-stroke), -1 in the second half (up-stroke), 0 for single notes. A metric
                 heuristic: written notes carry no strum direction.
  swing_hint     track-level swing in the written rhythm: of the onset groups on an off-beat
                 eighth, the share written at 2/3 of the beat (triplet swing) rather than 1/2;
                 0 when the track has none. Same value for every note of the track.
  section_onehot one-hot over SECTION_LABELS of the latest section mark at or before the onset
                 ("none" before the first mark or when the track has none); it is the one
                 feature that is a vector, of width len(SECTION_LABELS).
"""

import dataclasses
import re
from typing import Sequence

import numpy as np
import pretty_midi

from lora_jax import errors

ONSET_TOL_BEATS = 1e-6
CORE_FEATURES = ("beat_pos", "beat_frac", "pitch", "dur_beats", "prev_ioi", "next_ioi",
                 "is_downbeat", "vel_norm")
HINT_FEATURES = ("strum_dir_hint", "section_onehot", "swing_hint")
ALL_FEATURES = CORE_FEATURES + HINT_FEATURES
SECTION_LABELS = ("none", "intro", "verse", "prechorus", "chorus", "bridge", "outro")
TARGETS = ("velocity", "dur_beats")


class FeatureError(errors.UserError):
  """Written notes or a feature request that features cannot be computed from."""


def feature_width(name: str) -> int:
  """Number of columns a feature takes in a window: len(SECTION_LABELS) or 1."""
  if name not in ALL_FEATURES:
    raise FeatureError(f"unknown feature {name!r}; known: {list(ALL_FEATURES)}")
  return len(SECTION_LABELS) if name == "section_onehot" else 1


@dataclasses.dataclass(frozen=True)
class WrittenNotes:
  """Written (or deadpan) notes of one track in beat units, sorted by (onset, pitch)."""
  onset_beats: np.ndarray  # [N] float64
  dur_beats: np.ndarray  # [N] float64
  pitch: np.ndarray  # [N] int
  velocity: np.ndarray  # [N] int
  downbeat_beats: np.ndarray  # [D] float64, sorted, D >= 1
  sections: tuple[tuple[float, str], ...] = ()  # (start beat, label in SECTION_LABELS)

  def __post_init__(self):
    n = len(self.onset_beats)
    if n == 0:
      raise FeatureError("a track needs at least one note")
    for name in ("dur_beats", "pitch", "velocity"):
      if len(getattr(self, name)) != n:
        raise FeatureError(f"{name} has {len(getattr(self, name))} values for {n} onsets")
    if len(self.downbeat_beats) == 0:
      raise FeatureError("a track needs at least one downbeat")
    if np.any(np.diff(self.onset_beats) < 0):
      raise FeatureError("onsets must be sorted")
    for beat, label in self.sections:
      if label not in SECTION_LABELS:
        raise FeatureError(f"section label {label!r} at beat {beat} not in {SECTION_LABELS}")


def _onset_groups(onsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Group index per note and the onset of each group."""
  new_group = np.concatenate([[True], np.diff(onsets) > ONSET_TOL_BEATS])
  group = np.cumsum(new_group) - 1
  return group, onsets[new_group]


def _beat_frac(onsets: np.ndarray) -> np.ndarray:
  frac = onsets - np.floor(onsets + ONSET_TOL_BEATS)
  return np.clip(frac, 0.0, None)


def _iois(notes: WrittenNotes) -> tuple[np.ndarray, np.ndarray]:
  group, group_onsets = _onset_groups(notes.onset_beats)
  gaps = np.diff(group_onsets)
  prev = np.concatenate([[0.0], gaps])[group]
  nxt = np.concatenate([gaps, [0.0]])[group]
  return prev, nxt


def _beat_pos(notes: WrittenNotes) -> np.ndarray:
  downbeats = notes.downbeat_beats
  idx = np.searchsorted(downbeats, notes.onset_beats + ONSET_TOL_BEATS, side="right") - 1
  bar_start = downbeats[np.maximum(idx, 0)]
  return notes.onset_beats - bar_start


def _is_downbeat(notes: WrittenNotes) -> np.ndarray:
  downbeats = notes.downbeat_beats
  idx = np.clip(np.searchsorted(downbeats, notes.onset_beats), 1, len(downbeats) - 1)
  if len(downbeats) == 1:
    nearest = np.abs(notes.onset_beats - downbeats[0])
  else:
    nearest = np.minimum(np.abs(notes.onset_beats - downbeats[idx - 1]),
                         np.abs(notes.onset_beats - downbeats[idx]))
  return (nearest <= ONSET_TOL_BEATS).astype(np.float64)


def _strum_dir_hint(notes: WrittenNotes) -> np.ndarray:
  group, _ = _onset_groups(notes.onset_beats)
  chord = np.bincount(group)[group] >= 2
  direction = np.where(_beat_frac(notes.onset_beats) < 0.5, 1.0, -1.0)
  return np.where(chord, direction, 0.0)


def _swing_hint(notes: WrittenNotes) -> np.ndarray:
  _, group_onsets = _onset_groups(notes.onset_beats)
  frac = _beat_frac(group_onsets)
  straight = np.sum(np.abs(frac - 0.5) <= 1e-3)
  swung = np.sum(np.abs(frac - 2.0 / 3.0) <= 1e-3)
  share = swung / (straight + swung) if straight + swung else 0.0
  return np.full(len(notes.onset_beats), float(share))


def _section_onehot(notes: WrittenNotes) -> np.ndarray:
  labels = np.zeros(len(notes.onset_beats), dtype=np.int64)
  for beat, label in sorted(notes.sections):
    labels[notes.onset_beats + ONSET_TOL_BEATS >= beat] = SECTION_LABELS.index(label)
  return np.eye(len(SECTION_LABELS))[labels]


def compute_features(notes: WrittenNotes, names: Sequence[str]) -> dict[str, np.ndarray]:
  """The named features of `notes`: [N] arrays, [N, len(SECTION_LABELS)] for section_onehot."""
  out = {}
  for name in names:
    feature_width(name)  # rejects unknown names with the list of known ones
    if name == "beat_pos":
      out[name] = _beat_pos(notes)
    elif name == "beat_frac":
      out[name] = _beat_frac(notes.onset_beats)
    elif name == "pitch":
      out[name] = notes.pitch.astype(np.float64)
    elif name == "dur_beats":
      out[name] = notes.dur_beats.astype(np.float64)
    elif name in ("prev_ioi", "next_ioi"):
      prev, nxt = _iois(notes)
      out[name] = prev if name == "prev_ioi" else nxt
    elif name == "is_downbeat":
      out[name] = _is_downbeat(notes)
    elif name == "vel_norm":
      out[name] = notes.velocity.astype(np.float64) / 127.0
    elif name == "strum_dir_hint":
      out[name] = _strum_dir_hint(notes)
    elif name == "swing_hint":
      out[name] = _swing_hint(notes)
    else:
      out[name] = _section_onehot(notes)
  return out


def section_label(text: str) -> str | None:
  """The SECTION_LABELS entry a MIDI text event names ("Pre-Chorus 2" -> "prechorus"), or None."""
  word = re.sub(r"[^a-z]", "", text.lower())
  for label in sorted(SECTION_LABELS[1:], key=len, reverse=True):
    if word.startswith(label):
      return label
  return None


@dataclasses.dataclass(frozen=True)
class BeatGrid:
  """Piecewise-linear map between seconds and beats, extended linearly past both ends."""
  beat_times: np.ndarray  # [B] seconds of beats 0..B-1, strictly increasing, B >= 2

  def __post_init__(self):
    if len(self.beat_times) < 2 or np.any(np.diff(self.beat_times) <= 0):
      raise FeatureError(f"a beat grid needs >= 2 increasing beat times, got "
                         f"{np.asarray(self.beat_times)[:5]}...")

  def to_beats(self, seconds: np.ndarray) -> np.ndarray:
    """Beat position of each time."""
    t, b = self.beat_times, np.arange(len(self.beat_times), dtype=np.float64)
    out = np.interp(seconds, t, b)
    out = np.where(seconds < t[0], (seconds - t[0]) / (t[1] - t[0]), out)
    return np.where(seconds > t[-1], b[-1] + (seconds - t[-1]) / (t[-1] - t[-2]), out)

  def to_seconds(self, beats: np.ndarray) -> np.ndarray:
    """Time of each beat position: the inverse of `to_beats`, extended the same way."""
    t, b = self.beat_times, np.arange(len(self.beat_times), dtype=np.float64)
    out = np.interp(beats, b, t)
    out = np.where(beats < 0, t[0] + beats * (t[1] - t[0]), out)
    return np.where(beats > b[-1], t[-1] + (beats - b[-1]) * (t[-1] - t[-2]), out)


def midi_beat_grid(pm: pretty_midi.PrettyMIDI) -> tuple[BeatGrid, np.ndarray]:
  """The file's tempo-map beat grid and its downbeats in beats (get_beats, get_downbeats)."""
  beats = pm.get_beats()
  if len(beats) < 2:  # a file shorter than one beat: extend by the initial tempo
    beats = np.array([0.0, 60.0 / pm.get_tempo_changes()[1][0]])
  grid = BeatGrid(np.asarray(beats, dtype=np.float64))
  downbeats = np.round(grid.to_beats(pm.get_downbeats()), 6)
  return grid, downbeats


def midi_sections(pm: pretty_midi.PrettyMIDI, grid: BeatGrid) -> tuple[tuple[float, str], ...]:
  """Section marks from the file's text events whose text names a section."""
  marks = []
  for event in pm.text_events:
    label = section_label(event.text)
    if label is not None:
      marks.append((float(grid.to_beats(np.array([event.time]))[0]), label))
  return tuple(sorted(marks))


def written_notes_from_instrument(pm: pretty_midi.PrettyMIDI,
                                  instrument: pretty_midi.Instrument) -> WrittenNotes:
  """The instrument's notes as written, in beats of the file's tempo map (no snapping)."""
  if not instrument.notes:
    raise FeatureError(
        f"instrument {instrument.name!r} (program {instrument.program}) has no notes")
  grid, downbeats = midi_beat_grid(pm)
  starts = np.array([n.start for n in instrument.notes])
  ends = np.array([n.end for n in instrument.notes])
  onset = grid.to_beats(starts)
  dur = grid.to_beats(ends) - onset
  pitch = np.array([n.pitch for n in instrument.notes])
  velocity = np.array([n.velocity for n in instrument.notes])
  order = np.lexsort((pitch, onset))
  return WrittenNotes(onset[order], dur[order], pitch[order], velocity[order], downbeats,
                      midi_sections(pm, grid))


def instrument_features(pm: pretty_midi.PrettyMIDI, instrument: pretty_midi.Instrument,
                        names: Sequence[str] = ALL_FEATURES) -> dict[str, np.ndarray]:
  """Features of a pretty_midi instrument's notes, ordered by (onset, pitch)."""
  return compute_features(written_notes_from_instrument(pm, instrument), names)
