"""Deadpan/human pairs: written-looking input notes with the human velocity and duration as targets.

The deadpan input has constant velocity and onsets and durations on a grid of sixteenths and
eighth-note triplets (`SNAP_DIVISIONS`). Which grid depends on what the source knows:

  score           (.match, Mozart)  the score itself: onsets and durations as written. Real.
  tempo_map       (POP909)          the file's tempo map (pretty_midi get_beats/get_downbeats),
                                    shifted by one phase per track (`grid_phase`), then snapped.
                                    Real: POP909 onsets sit on that grid (grid_fit 0.5-1.0), only
                                    velocities and durations are performed. Its time signatures
                                    are not to be trusted (POP909_022 declares 4/4 and 1/4 at
                                    time 0; pretty_midi keeps 1/4, so every beat is a downbeat).
  tempo_estimate  (MAESTRO)         no score and a placeholder 120 bpm tempo map, so one constant
                                    tempo from pretty_midi's estimate_tempo (the dominant
                                    inter-onset rate, often twice the notated tempo), downbeats
                                    every 4 beats, snapped. Not real: rubato moves notes across
                                    grid lines, so beat_pos, beat_frac and is_downbeat carry no
                                    metric meaning, and grid_fit is near 0.

Where the source has no written durations (POP909, MAESTRO) the deadpan duration is the human
duration snapped to the grid (at least a sixteenth): the input then carries the target up to
snapping, and a duration model learns only the de-quantisation. Mozart has real written durations.
Target durations are key-press durations (sustain pedal ignored), in beats of the same grid.
"""

import copy
import dataclasses
import os

import numpy as np
import pretty_midi

from lora_jax import errors
from lora_jax.data import midi_file
from lora_jax.data.duv import align as duv_align
from lora_jax.data.duv import features as duv_features
from lora_jax.data.duv import match_file

SNAP_DIVISIONS = (4, 3)  # sixteenths and eighth-note triplets
DEADPAN_VELOCITY = 64
GRID_IS_REAL = {"score": True, "tempo_map": True, "tempo_estimate": False}
SOURCE_GRID = {"maestro": "tempo_estimate", "pop909": "tempo_map", "mozart": "score"}


class CorruptMidiError(errors.UserError):
  """A MIDI file pretty_midi cannot read; the message names the file."""


@dataclasses.dataclass(frozen=True)
class DeadpanPair:
  """One track: deadpan written notes and, per note in the same order, the human targets."""
  file: str  # path relative to the cache dir, e.g. "pop909/POP909_008.mid"
  source: str
  piece_id: str  # split key: tracks of one piece share it
  instrument: str  # pretty_midi instrument class, lowercased ("piano"), or "drums"
  track: int
  grid_source: str  # a key of GRID_IS_REAL
  grid_fit: float  # |mean exp(2 pi i 4 b)| of human onsets b: 1 on a sixteenth grid, ~0 if free
  snap_beats: float  # mean |human onset - deadpan onset| in beats, after the phase shift
  duration_sec: float  # last human offset minus first human onset
  notes: duv_features.WrittenNotes
  target_velocity: np.ndarray  # [N] int 0-127
  target_dur_beats: np.ndarray  # [N] float64

  @property
  def grid_is_real(self) -> bool:
    return GRID_IS_REAL[self.grid_source]


def snap_beats(beats: np.ndarray, divisions: tuple[int, ...] = SNAP_DIVISIONS) -> np.ndarray:
  """Each value moved to the nearest multiple of 1/d beat, d in `divisions` (first d on ties)."""
  candidates = np.stack([np.round(beats * d) / d for d in divisions])
  best = np.argmin(np.abs(candidates - beats) + 1e-9 * np.arange(len(divisions))[:, None], axis=0)
  return candidates[best, np.arange(len(beats))]


def grid_phase(onset_beats: np.ndarray) -> tuple[float, float]:
  """(phase in beats, fit in [0, 1]) of onsets against a sixteenth grid.

  The fine phase is the circular mean of the onsets' sixteenth positions (fit: its resultant
  length). It is then moved by whole sixteenths (0-3) to put the most onsets on a beat: some
  POP909 tempo maps start a sixteenth away from the music's beat.
  """
  mean = np.mean(np.exp(2j * np.pi * 4 * onset_beats))
  fine = float(np.angle(mean) / (2 * np.pi * 4))
  on_beat = [np.sum(np.abs(snap_beats(onset_beats - fine - k / 4) % 1.0) < 1e-9) for k in range(4)]
  return fine + int(np.argmax(on_beat)) / 4, float(np.abs(mean))


def load_midi(path: str) -> pretty_midi.PrettyMIDI:
  """The file as `midi_file.read_midi` reads it (long and fine-grained files too); a failure is a
  CorruptMidiError naming the file and the reason."""
  try:
    return midi_file.read_midi(path)
  except midi_file.MidiReadError as e:
    raise CorruptMidiError(str(e)) from e


def _instrument_name(instrument: pretty_midi.Instrument) -> str:
  if instrument.is_drum:
    return "drums"
  return pretty_midi.program_to_instrument_class(instrument.program).lower()


def _constant_tempo_grid(pm: pretty_midi.PrettyMIDI,
                         path: str) -> tuple[duv_features.BeatGrid, np.ndarray]:
  if len(np.unique(pm.get_onsets())) < 2:
    raise ValueError(f"{path}: a tempo estimate needs >= 2 distinct onsets, the file has "
                     f"{len(np.unique(pm.get_onsets()))}")
  period = 60.0 / pm.estimate_tempo()
  n_beats = int(np.ceil(pm.get_end_time() / period)) + 2
  grid = duv_features.BeatGrid(np.arange(n_beats) * period)
  return grid, np.arange(0.0, n_beats, 4.0)


def _deadpan_beats(onset: np.ndarray, human_dur: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, float, float]:
  """(deadpan onsets, deadpan durations, phase, fit) of one track's human notes, in beats."""
  phase, fit = grid_phase(onset)
  deadpan_dur = np.maximum(snap_beats(human_dur), 1.0 / max(SNAP_DIVISIONS))
  return snap_beats(onset - phase), deadpan_dur, phase, fit


def deadpan_midi(pm: pretty_midi.PrettyMIDI,
                 deadpan_velocity: int = DEADPAN_VELOCITY) -> pretty_midi.PrettyMIDI:
  """A copy of `pm` with every track deadpan as `midi_pairs` makes it on the tempo map's grid.

  Onsets and durations snapped, one velocity, no control changes (pedalling is performance).
  The notes sit at the deadpan beats themselves, not shifted back by the track's phase, so that
  humanising the copy shows a model exactly the input `midi_pairs` trains and scores it on.
  """
  grid, _ = duv_features.midi_beat_grid(pm)
  out = copy.deepcopy(pm)
  for inst in out.instruments:
    if not inst.notes:
      continue
    start = grid.to_beats(np.array([n.start for n in inst.notes]))
    dur = grid.to_beats(np.array([n.end for n in inst.notes])) - start
    onset, dur, _, _ = _deadpan_beats(start, dur)
    begin, end = grid.to_seconds(onset), grid.to_seconds(onset + dur)
    inst.notes = [pretty_midi.Note(deadpan_velocity, n.pitch, float(b), float(e))
                  for n, b, e in zip(inst.notes, begin, end)]
    inst.notes.sort(key=lambda n: (n.start, n.pitch))
    inst.control_changes = []
  return out


def midi_pairs(path: str, rel_file: str, source: str, piece_id: str, grid_source: str,
               deadpan_velocity: int = DEADPAN_VELOCITY) -> list[DeadpanPair]:
  """One pair per instrument with notes; [] for a file without notes."""
  if grid_source not in ("tempo_map", "tempo_estimate"):
    raise ValueError(f"MIDI grid_source must be tempo_map or tempo_estimate, got {grid_source!r}")
  pm = load_midi(path)
  if not any(inst.notes for inst in pm.instruments):
    return []
  if grid_source == "tempo_map":
    grid, downbeats = duv_features.midi_beat_grid(pm)
    sections = duv_features.midi_sections(pm, grid)
  else:
    grid, downbeats = _constant_tempo_grid(pm, path)
    sections = ()
  pairs = []
  for track, inst in enumerate(pm.instruments):
    if not inst.notes:
      continue
    start = np.array([n.start for n in inst.notes])
    end = np.array([n.end for n in inst.notes])
    onset = grid.to_beats(start)
    human_dur = grid.to_beats(end) - onset
    deadpan_onset, deadpan_dur, phase, fit = _deadpan_beats(onset, human_dur)
    pitch = np.array([n.pitch for n in inst.notes])
    order = np.lexsort((onset, pitch, deadpan_onset))
    notes = duv_features.WrittenNotes(
        deadpan_onset[order], deadpan_dur[order], pitch[order],
        np.full(len(order), deadpan_velocity), downbeats, sections)
    pairs.append(DeadpanPair(
        file=rel_file, source=source, piece_id=piece_id, instrument=_instrument_name(inst),
        track=track, grid_source=grid_source, grid_fit=fit,
        snap_beats=float(np.mean(np.abs(onset - phase - deadpan_onset))),
        duration_sec=float(end.max() - start.min()), notes=notes,
        target_velocity=np.array([n.velocity for n in inst.notes])[order],
        target_dur_beats=human_dur[order]))
  return pairs


def match_pair(path: str, rel_file: str, source: str, piece_id: str,
               deadpan_velocity: int = DEADPAN_VELOCITY) -> DeadpanPair:
  """The pair of a .match file: the score as deadpan input, the performance as targets."""
  perf = match_file.read_match(path)
  bar = perf.beats_per_bar
  last = np.max(perf.score_onset_beats + perf.score_dur_beats)
  downbeats = np.arange(perf.bar_start_beats[0], last + bar, bar)
  off_grid = [b for b in perf.bar_start_beats if not np.any(np.abs(downbeats - b) < 1e-6)]
  if off_grid:
    raise match_file.MatchFormatError(
        f"{path}: bars starting at beats {off_grid[:5]} are not {bar} beats apart")
  notes = duv_features.WrittenNotes(
      perf.score_onset_beats, perf.score_dur_beats, perf.pitch,
      np.full(len(perf.pitch), deadpan_velocity), downbeats)
  try:
    to_beats = lambda seconds: duv_align.score_beats_at(perf.score_onset_beats,
                                                        perf.perf_onset_sec, seconds)
    human_dur = to_beats(perf.perf_offset_sec) - to_beats(perf.perf_onset_sec)
  except duv_align.AlignError as e:
    raise match_file.MatchFormatError(f"{path}: {e}") from e
  return DeadpanPair(
      file=rel_file, source=source, piece_id=piece_id, instrument="piano", track=0,
      grid_source="score", grid_fit=1.0, snap_beats=0.0,
      duration_sec=float(perf.perf_offset_sec.max() - perf.perf_onset_sec.min()),
      notes=notes, target_velocity=perf.velocity, target_dur_beats=human_dur)


def pairs_from_file(path: str, rel_file: str, source: str,
                    deadpan_velocity: int = DEADPAN_VELOCITY) -> list[DeadpanPair]:
  """Pairs of one cached file of `source` (a key of SOURCE_GRID); piece id "<source>/<stem>"."""
  if source not in SOURCE_GRID:
    raise ValueError(f"unknown source {source!r}; known: {sorted(SOURCE_GRID)}")
  piece_id = f"{source}/{os.path.splitext(os.path.basename(rel_file))[0]}"
  if SOURCE_GRID[source] == "score":
    return [match_pair(path, rel_file, source, piece_id, deadpan_velocity)]
  return midi_pairs(path, rel_file, source, piece_id, SOURCE_GRID[source], deadpan_velocity)
