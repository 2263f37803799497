"""The two sides of a .match file as two MIDI files, `<name>.mid` and `<name>.score.mid`, and the
fraction of its true note pairs an alignment of those files finds again.

The score is written at 480 ticks per quarter, 120 bpm, with the .match time signature (score
beats are 1/denominator of a whole note, converted to quarters); the performance at the .match
clock (its ticks and tempo), so every performed time is exact. Unmatched notes of either side are
written too: an aligner sees both files as a user's would be, with the ornaments and omissions.
"""

import collections
import dataclasses
import os

import mido
import numpy as np

from lora_jax import atomic
from lora_jax.data import midi_file
from lora_jax.data.duv import align
from lora_jax.data.duv import match_file
from lora_jax.data.duv import score_pair

SCORE_TPQ = 480
PERF_TPQ = 480
PERF_TEMPO = 500_000  # microseconds per quarter: one tick is 1/960 s


def _track(starts: np.ndarray, ends: np.ndarray, pitches: np.ndarray, velocities: np.ndarray,
           head: list[mido.MetaMessage]) -> mido.MidiTrack:
  events = []
  for start, end, pitch, velocity in zip(starts, ends, pitches, velocities):
    events.append((int(start), 1, mido.Message("note_on", note=int(pitch), velocity=int(velocity))))
    events.append((int(max(end, start + 1)), 0, mido.Message("note_off", note=int(pitch))))
  track, last = mido.MidiTrack(head), 0
  for tick, _, msg in sorted(events, key=lambda e: e[:2]):
    track.append(msg.copy(time=tick - last))
    last = tick
  return track


def _save(tracks: list[mido.MidiTrack], tpq: int, path: str) -> None:
  midi = mido.MidiFile(type=1, ticks_per_beat=tpq)
  midi.tracks += tracks
  with atomic.atomic_path(path) as tmp:
    midi.save(tmp)


def write_match_as_midi(match_path: str, out_dir: str, name: str) -> tuple[str, str]:
  """(performance path, score path) written from a .match file into `out_dir`."""
  notes = match_file.read_match_notes(match_path)
  os.makedirs(out_dir, exist_ok=True)
  quarters = 4.0 / notes.beat_unit
  score_head = [mido.MetaMessage("set_tempo", tempo=500_000),
                mido.MetaMessage("time_signature", numerator=notes.beats_per_bar,
                                 denominator=notes.beat_unit)]
  onset = np.round(notes.score_onset_beats * quarters * SCORE_TPQ)
  end = np.round((notes.score_onset_beats + notes.score_dur_beats) * quarters * SCORE_TPQ)
  score_path = os.path.join(out_dir, f"{name}{score_pair.SCORE_TAG}.mid")
  _save([_track(onset - onset.min(), end - onset.min(), notes.score_pitch,
                np.full(len(onset), 64), score_head)], SCORE_TPQ, score_path)
  per_sec = PERF_TPQ * 1e6 / PERF_TEMPO
  perf_path = os.path.join(out_dir, f"{name}.mid")
  _save([_track(np.round(notes.perf_onset_sec * per_sec), np.round(notes.perf_offset_sec * per_sec),
                notes.perf_pitch, notes.perf_velocity,
                [mido.MetaMessage("set_tempo", tempo=PERF_TEMPO)])], PERF_TPQ, perf_path)
  return perf_path, score_path


@dataclasses.dataclass(frozen=True)
class Accuracy:
  true_pairs: int
  found_pairs: int
  correct: int  # found pairs that are true pairs

  @property
  def recall(self) -> float:
    return self.correct / self.true_pairs

  @property
  def precision(self) -> float:
    return self.correct / max(self.found_pairs, 1)


def _indices_by_key(keys_read: list[tuple], keys_true: list[tuple]) -> np.ndarray:
  """For each note read back from MIDI, the index of the same note in the .match lists."""
  pool = collections.defaultdict(list)
  for i, key in enumerate(keys_true):
    pool[key].append(i)
  return np.array([pool[key].pop(0) for key in keys_read])


def alignment_accuracy(match_path: str, perf_path: str, score_path: str) -> Accuracy:
  """How many of the .match file's true pairs aligning the two MIDI files finds."""
  notes = match_file.read_match_notes(match_path)
  score, _, _ = score_pair.read_score(score_path)
  perf = score_pair.read_performance(perf_path)
  quarters = 4.0 / notes.beat_unit
  first = np.min(notes.score_onset_beats)
  score_true = [(int(p), round((b - first) * quarters * SCORE_TPQ))
                for p, b in zip(notes.score_pitch, notes.score_onset_beats)]
  score_pm = midi_file.read_midi(score_path)  # keys in ticks: the beats of any meter's grid
  score_read = [(n.pitch, score_pm.time_to_tick(n.start))
                for inst in score_pm.instruments for n in inst.notes]  # read_score's order
  per_sec = PERF_TPQ * 1e6 / PERF_TEMPO
  perf_true = [(int(p), round(t * per_sec)) for p, t in zip(notes.perf_pitch, notes.perf_onset_sec)]
  perf_read = [(int(p), round(t * per_sec)) for p, t in zip(perf.pitch, perf.onset)]
  score_ids = _indices_by_key(score_read, score_true)
  perf_ids = _indices_by_key(perf_read, perf_true)
  found = align.align(score.onset, score.pitch, perf.onset, perf.pitch)
  ours = set(zip(score_ids[found.score_index].tolist(), perf_ids[found.perf_index].tolist()))
  true = set(map(tuple, notes.true_pairs.tolist()))
  return Accuracy(len(true), len(ours), len(ours & true))
