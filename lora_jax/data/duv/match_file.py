"""Reader for .match files (version 5): a performance aligned note by note to its score.

Only what DUV needs is read: matched `snote(...)-note(...)` lines (score onset/duration in beats,
performed onset/offset in seconds, performed velocity), the clock units and the time signature.
Insertions (played, not written) and deletions (written, not played) are counted and left out.
Sustain-pedal lines are ignored: durations are key-press durations, as in a MIDI file.
Written without partitura, whose import tries to download a soundfont when pyfluidsynth is
installed and so fails offline.
"""

import dataclasses
import fractions
import re

import numpy as np

from lora_jax import errors

_SNOTE_NOTE = re.compile(
    r"^snote\((?P<snote>.*)\)-note\((?P<note>.*)\)\.$")
_INFO = re.compile(r"^info\((?P<key>\w+),(?P<value>.*)\)\.$")
_TIME_SIG = re.compile(r"^meta\(timeSignature,(?P<num>\d+)/(?P<den>\d+),")
_PITCH_CLASS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
_ALTER = {"n": 0, "#": 1, "b": -1, "##": 2, "bb": -2, "x": 2}


class MatchFormatError(errors.UserError):
  """A .match file this reader cannot use; the message names file and line."""


@dataclasses.dataclass(frozen=True)
class MatchPerformance:
  """Matched notes of a .match file, in score order."""
  score_onset_beats: np.ndarray  # [N] float64
  score_dur_beats: np.ndarray  # [N] float64
  pitch: np.ndarray  # [N] int
  perf_onset_sec: np.ndarray  # [N] float64
  perf_offset_sec: np.ndarray  # [N] float64, key release
  velocity: np.ndarray  # [N] int
  bar_start_beats: np.ndarray  # [M] float64 start of each bar seen in the score
  beats_per_bar: float
  n_insertions: int
  n_deletions: int


def _fields(text: str) -> list[str]:
  """Top-level comma-separated fields; commas inside [...] do not split."""
  out, depth, current = [], 0, ""
  for char in text:
    depth += (char == "[") - (char == "]")
    if char == "," and depth == 0:
      out.append(current)
      current = ""
    else:
      current += char
  return out + [current]


def _midi_pitch(name: str, octave: str) -> int:
  step, alter = name.strip("[]").split(",")
  return 12 * (int(octave) + 1) + _PITCH_CLASS[step.upper()] + _ALTER[alter]


def _fraction(text: str) -> float:
  return float(sum(fractions.Fraction(part) for part in text.split("+")))


def read_match(path: str) -> MatchPerformance:
  """Matched notes of a version-5 .match file."""
  info, time_sigs, rows = {}, set(), []
  insertions = deletions = 0
  with open(path) as f:
    lines = f.read().splitlines()
  for lineno, line in enumerate(lines, 1):
    line = line.strip()
    try:
      if m := _SNOTE_NOTE.match(line):
        s, n = _fields(m["snote"]), _fields(m["note"])
        bar, beat = s[3].split(":")
        rows.append((float(s[6]), float(s[7]) - float(s[6]), _midi_pitch(s[1], s[2]),
                     int(bar), int(beat), _fraction(s[4]), _midi_pitch(n[1], n[2]),
                     int(n[3]), int(n[4]), int(n[6])))
      elif m := _INFO.match(line):
        info[m["key"]] = m["value"]
      elif m := _TIME_SIG.match(line):
        time_sigs.add((int(m["num"]), int(m["den"])))
      elif line.startswith("insertion-"):
        insertions += 1
      elif line.startswith("snote(") and line.endswith("-deletion."):
        deletions += 1
    except (ValueError, KeyError, IndexError) as e:
      raise MatchFormatError(f"{path}:{lineno}: cannot read {line[:120]!r}: {e}") from e
  if info.get("matchFileVersion", "").split(".")[0] != "5":
    raise MatchFormatError(f"{path}: matchFileVersion {info.get('matchFileVersion')!r}, "
                           f"this reader handles version 5")
  if not rows:
    raise MatchFormatError(f"{path}: no matched snote-note lines")
  if "timeSignature" in info:
    num, den = info["timeSignature"].strip("[]").split("/")
    time_sigs.add((int(num), int(den)))
  if len(time_sigs) != 1:
    raise MatchFormatError(f"{path}: needs exactly one time signature, found {sorted(time_sigs)}")
  (num, den), = time_sigs
  sec_per_tick = float(info["midiClockRate"]) * 1e-6 / float(info["midiClockUnits"])
  a = np.array(rows, dtype=np.float64)
  mismatch = np.flatnonzero(a[:, 2] != a[:, 6])
  if len(mismatch):
    raise MatchFormatError(f"{path}: {len(mismatch)} matched notes differ in score and "
                           f"performed pitch, first at match row {mismatch[0]}")
  # Bar start = onset - (beat - 1) - offset in the beat; the offset is a fraction of a whole note.
  bar_starts = np.unique(np.round(a[:, 0] - (a[:, 4] - 1) - a[:, 5] * den, 6))
  order = np.lexsort((a[:, 2], a[:, 0]))
  a = a[order]
  return MatchPerformance(
      score_onset_beats=a[:, 0], score_dur_beats=a[:, 1], pitch=a[:, 2].astype(np.int64),
      perf_onset_sec=a[:, 7] * sec_per_tick, perf_offset_sec=a[:, 8] * sec_per_tick,
      velocity=a[:, 9].astype(np.int64), bar_start_beats=bar_starts, beats_per_bar=float(num),
      n_insertions=insertions, n_deletions=deletions)


@dataclasses.dataclass(frozen=True)
class MatchNotes:
  """Both sides of a .match file in full, unmatched notes included, and its true note pairs."""
  score_onset_beats: np.ndarray  # [S] float64, every snote, matched or deleted
  score_dur_beats: np.ndarray  # [S] float64
  score_pitch: np.ndarray  # [S] int
  perf_onset_sec: np.ndarray  # [P] float64, every performed note, matched or inserted
  perf_offset_sec: np.ndarray  # [P] float64
  perf_pitch: np.ndarray  # [P] int
  perf_velocity: np.ndarray  # [P] int
  true_pairs: np.ndarray  # [K, 2] int, (score index, perf index) of the snote-note lines
  beats_per_bar: int
  beat_unit: int  # the time signature's denominator


_DELETION = re.compile(r"^snote\((?P<snote>.*)\)-deletion\.$")
_INSERTION = re.compile(r"^insertion-note\((?P<note>.*)\)\.$")


def read_match_notes(path: str) -> MatchNotes:
  """Every written and every performed note of a version-5 .match file, with the true pairs:
  ground truth for an aligner that sees the two sides as separate note lists."""
  perf = read_match(path)  # checks the version, clock and time signature
  with open(path) as f:
    lines = f.read().splitlines()
  score, played, pairs = [], [], []
  info = dict(m.groups() for line in lines if (m := _INFO.match(line.strip())))
  sec_per_tick = float(info["midiClockRate"]) * 1e-6 / float(info["midiClockUnits"])

  def add_score(fields):
    score.append((float(fields[6]), float(fields[7]) - float(fields[6]),
                  _midi_pitch(fields[1], fields[2])))

  def add_played(fields):
    played.append((int(fields[3]) * sec_per_tick, int(fields[4]) * sec_per_tick,
                   _midi_pitch(fields[1], fields[2]), int(fields[6])))

  for line in lines:
    line = line.strip()
    if m := _SNOTE_NOTE.match(line):
      pairs.append((len(score), len(played)))
      add_score(_fields(m["snote"]))
      add_played(_fields(m["note"]))
    elif m := _DELETION.match(line):
      add_score(_fields(m["snote"]))
    elif m := _INSERTION.match(line):
      add_played(_fields(m["note"]))
  s, p = np.array(score), np.array(played)
  (den,) = {int(m["den"]) for line in lines if (m := _TIME_SIG.match(line.strip()))} or {
      int(info["timeSignature"].strip("[]").split("/")[1])}
  return MatchNotes(s[:, 0], s[:, 1], s[:, 2].astype(np.int64), p[:, 0], p[:, 1],
                    p[:, 2].astype(np.int64), p[:, 3].astype(np.int64),
                    np.array(pairs, dtype=np.int64), int(perf.beats_per_bar), den)
