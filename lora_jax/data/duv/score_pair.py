"""A performance MIDI beside its score MIDI as one DUV pair: the score is the deadpan input.

Naming rule: `<name>.score.mid` (any MIDI suffix, any case) is the score of the performance
`<name>.mid` in the same folder (`take1.mid` + `take1.score.mid`). The score is read in beats of
its own tempo map (as exported by a notation program, one tempo or several), the performance in
seconds; every track of each side is used, drums included (a drum note is matched by its key).
`align.align` matches the notes; matched written notes become the input, the performed velocity
and key-press duration (in score beats, through the tempo map of the matches) the targets, as
for a .match file. Unmatched notes are counted and left out. A pair where less than
`MIN_MATCHED_FRACTION` of either side is matched is refused: the files are not score and
performance of one piece.
"""

import dataclasses
import os

import numpy as np

from lora_jax.data import midi_file
from lora_jax.data.duv import align as duv_align
from lora_jax.data.duv import features as duv_features
from lora_jax.data.duv import pairs as duv_pairs

SCORE_TAG = ".score"
MIN_MATCHED_FRACTION = 0.5


@dataclasses.dataclass(frozen=True)
class SideNotes:
  """Every note of one side, all tracks together."""
  onset: np.ndarray  # [N] float64, beats for a score, seconds for a performance
  offset: np.ndarray  # [N] float64
  pitch: np.ndarray  # [N] int
  velocity: np.ndarray  # [N] int


@dataclasses.dataclass(frozen=True)
class AlignedCounts:
  """What the alignment of one pair did."""
  score_notes: int
  perf_notes: int
  matched: int

  def text(self, score_name: str) -> str:
    return (f"aligned to {score_name}: {self.matched} of {self.perf_notes} performed notes "
            f"matched, {self.perf_notes - self.matched} unmatched (ornaments, wrong notes) and "
            f"{self.score_notes - self.matched} written notes not played, all left out")


def score_name_of(name: str) -> str | None:
  """The performance's file name for a score's (`a.score.mid` -> `a`, the suffix to be found),
  None when `name` is not a score by the naming rule."""
  stem, suffix = os.path.splitext(name)
  if midi_file.is_midi_name(name) and stem.lower().endswith(SCORE_TAG):
    return stem[:-len(SCORE_TAG)]
  return None


def _notes(pm, to_beats) -> SideNotes:
  notes = [n for inst in pm.instruments for n in inst.notes]
  start = np.array([n.start for n in notes], dtype=np.float64)
  end = np.array([n.end for n in notes], dtype=np.float64)
  return SideNotes(to_beats(start), to_beats(end), np.array([n.pitch for n in notes], np.int64),
                   np.array([n.velocity for n in notes], np.int64))


def read_score(path: str) -> tuple[SideNotes, np.ndarray, tuple[tuple[float, str], ...]]:
  """(notes in beats, downbeats in beats, sections) of a score MIDI."""
  pm = duv_pairs.load_midi(path)
  grid, downbeats = duv_features.midi_beat_grid(pm)
  return _notes(pm, grid.to_beats), downbeats, duv_features.midi_sections(pm, grid)


def read_performance(path: str) -> SideNotes:
  """Notes of a performance MIDI, in seconds."""
  return _notes(duv_pairs.load_midi(path), lambda seconds: seconds)


def aligned_pair(score: SideNotes, downbeats: np.ndarray, sections, perf: SideNotes,
                 rel_file: str, source: str, piece_id: str, deadpan_velocity: int,
                 config: duv_align.AlignConfig = duv_align.AlignConfig()
                 ) -> tuple[duv_pairs.DeadpanPair, AlignedCounts]:
  """The pair of two aligned note lists, and the counts of what matched."""
  for side, notes in (("score", score), ("performance", perf)):
    if not len(notes.onset):
      raise duv_align.AlignError(f"the {side} has no notes")
  found = duv_align.align(score.onset, score.pitch, perf.onset, perf.pitch, config)
  s, p = found.score_index, found.perf_index
  counts = AlignedCounts(len(score.onset), len(perf.onset), len(s))
  fraction = min(len(s) / len(score.onset), len(s) / len(perf.onset))
  if fraction < MIN_MATCHED_FRACTION:
    raise duv_align.AlignError(
        f"only {len(s)} notes matched between {len(score.onset)} written and {len(perf.onset)} "
        f"performed ({fraction:.0%} of the larger side, under {MIN_MATCHED_FRACTION:.0%}): "
        f"are they one piece?")
  to_beats = lambda seconds: duv_align.score_beats_at(score.onset[s], perf.onset[p], seconds)
  notes = duv_features.WrittenNotes(
      score.onset[s], score.offset[s] - score.onset[s], score.pitch[s],
      np.full(len(s), deadpan_velocity), downbeats, tuple(sections))
  pair = duv_pairs.DeadpanPair(
      file=rel_file, source=source, piece_id=piece_id, instrument="piano", track=0,
      grid_source="score", grid_fit=1.0, snap_beats=0.0,
      duration_sec=float(perf.offset[p].max() - perf.onset[p].min()), notes=notes,
      target_velocity=perf.velocity[p],
      target_dur_beats=to_beats(perf.offset[p]) - to_beats(perf.onset[p]))
  return pair, counts


def midi_score_pair(perf_path: str, score_path: str, rel_file: str, source: str, piece_id: str,
                    deadpan_velocity: int = duv_pairs.DEADPAN_VELOCITY
                    ) -> tuple[duv_pairs.DeadpanPair, AlignedCounts]:
  """The pair of a performance MIDI and its score MIDI."""
  score, downbeats, sections = read_score(score_path)
  return aligned_pair(score, downbeats, sections, read_performance(perf_path), rel_file, source,
                      piece_id, deadpan_velocity)
