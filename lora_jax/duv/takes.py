"""A DUV data set from a folder of the user's own performances: their MIDI takes and .match files.

Every file under the folder (any depth) is one piece, its id `own/<path without suffix>`:
  *.mid, *.midi   a performance recorded as MIDI. Its deadpan input is the notes snapped to the
                  beat grid of the file's tempo map (`grid='tempo_map'`: played to a click, as a
                  DAW records it), or of one estimated tempo (`grid='tempo_estimate'`: played
                  freely); each track's `grid_fit` (0-1) in the report says how well it sits.
  *.match         a performance aligned to its score (the Mozart source's format): the score is
                  the deadpan input.
  <name>.mid + <name>.score.mid
                  a performance and its score as two MIDI files (`score_pair`'s naming rule).
                  The notes are aligned (`align`): matched written notes are the deadpan input,
                  unmatched notes of either side are counted on the performance's line and left
                  out. A score with no performance beside it is dropped with a line saying so.
Which tracks: those whose General MIDI program is of the instrument's class (`guitar` keeps
programs 24-31, `drums` the drum channel). A file with no track of that class, say a guitar take
saved with the default program 0, gives all its tracks (drum tracks apart) as that instrument, and
its line says so. Every kept track is labelled `instrument`, so `configs/duv/<instrument>.py`
selects it.

The report has one line per file: what it gave (tracks, notes, grid fit) or why it was dropped
(unreadable, no notes, no track left after the filters, an alignment that failed). The
manifests, scaler, windows and `duv_report.json` are `duv_build`'s.
"""

import dataclasses
import os

import numpy as np
import pretty_midi

from lora_jax.data import midi_file
from lora_jax.data.duv import build as duv_build
from lora_jax.data.duv import features as duv_features
from lora_jax.data.duv import manifest as duv_manifest
from lora_jax.data.duv import match_file
from lora_jax.data.duv import pairs as duv_pairs
from lora_jax.data.duv import score_pair

SOURCE = "own"
GRIDS = ("tempo_map", "tempo_estimate")
INSTRUMENTS = tuple(sorted({c.lower() for c in pretty_midi.constants.INSTRUMENT_CLASSES}
                           | {"drums"}))


@dataclasses.dataclass(frozen=True)
class FileLine:
  """What one file gave."""
  file: str  # relative to the folder
  tracks: int  # kept
  notes: int  # kept
  grid_fit: float | None  # mean over the kept tracks
  note: str  # why it was dropped, or a remark ('' when plain)

  def text(self) -> str:
    if not self.tracks:
      return f"{self.file}: dropped: {self.note}"
    fit = f", grid fit {self.grid_fit:.2f}" if self.grid_fit is not None else ""
    return (f"{self.file}: {self.tracks} track{'s' * (self.tracks != 1)}, {self.notes} notes"
            f"{fit}{'; ' + self.note if self.note else ''}")


def _scores_by_performance(files: list[str]) -> tuple[dict[str, str], list[str]]:
  """{performance: its score} by the naming rule, and the scores with no performance beside."""
  by_stem = {os.path.splitext(f)[0]: f for f in files
             if midi_file.is_midi_name(f) and score_pair.score_name_of(f) is None}
  paired, alone = {}, []
  for f in files:
    stem = score_pair.score_name_of(f)
    if stem is None:
      continue
    if stem in by_stem:
      paired[by_stem[stem]] = f
    else:
      alone.append(f)
  return paired, alone


def _pairs(path: str, rel: str, piece_id: str, grid: str, velocity: int, score: str | None
           ) -> tuple[list[duv_pairs.DeadpanPair], str]:
  """The file's pairs and a remark (the alignment's counts for a performance with its score)."""
  if rel.lower().endswith(".match"):
    return [duv_pairs.match_pair(path, rel, SOURCE, piece_id, velocity)], ""
  if score is not None:
    pair, counts = score_pair.midi_score_pair(
        path, os.path.join(os.path.dirname(path), os.path.basename(score)), rel, SOURCE,
        piece_id, velocity)
    return [pair], counts.text(os.path.basename(score))
  return duv_pairs.midi_pairs(path, rel, SOURCE, piece_id, grid, velocity), ""


def _pick(pairs: list[duv_pairs.DeadpanPair], instrument: str
          ) -> tuple[list[duv_pairs.DeadpanPair], str]:
  """The tracks of `instrument`, relabelled; and a remark when the programs did not say so."""
  if any(p.source == SOURCE and p.grid_source == "score" for p in pairs):
    return [dataclasses.replace(p, instrument=instrument) for p in pairs], ""
  matching = [p for p in pairs if p.instrument == instrument]
  if matching:
    other = len(pairs) - len(matching)
    return matching, f"{other} other track{'s' * (other != 1)} left out" if other else ""
  if instrument == "drums":
    return [], ""
  melodic = [p for p in pairs if p.instrument != "drums"]
  classes = sorted({p.instrument for p in melodic})
  return ([dataclasses.replace(p, instrument=instrument) for p in melodic],
          f"no {instrument} program in the file ({', '.join(classes)}): took its tracks as "
          f"{instrument}" if melodic else "")


def takes_rows(folder: str, instrument: str, grid: str, filters: duv_manifest.Filters,
               valid_fraction: float, deadpan_velocity: int = duv_pairs.DEADPAN_VELOCITY
               ) -> tuple[list[dict], dict, list[FileLine]]:
  """Manifest rows of a folder of takes, filter counts, and one line per file."""
  if instrument not in INSTRUMENTS:
    raise ValueError(f"instrument {instrument!r} is not one of {', '.join(INSTRUMENTS)}")
  if grid not in GRIDS:
    raise ValueError(f"grid {grid!r} is not one of {GRIDS}")
  if not os.path.isdir(folder):
    raise ValueError(f"{folder}: folder does not exist")
  files = sorted(os.path.relpath(os.path.join(here, f), folder)
                 for here, dirs, names in os.walk(folder) for f in names
                 if not f.startswith(".") and (midi_file.is_midi_name(f)
                                               or f.lower().endswith(".match")))
  if not files:
    raise ValueError(f"{folder}: no .mid, .midi or .match files in it")
  rows, lines = [], []
  removed = {"files_without_notes": 0, "min_notes": 0, "min_duration_sec": 0,
             "max_duration_sec": 0}
  scores, lone_scores = _scores_by_performance(files)
  for rel in files:
    if rel in lone_scores:
      performance = score_pair.score_name_of(rel) + ".mid"
      lines.append(FileLine(rel, 0, 0, None, f"a score with no performance beside it "
                                              f"(expected {performance} or another MIDI suffix)"))
      continue
    if rel in scores.values():
      continue  # read with its performance, on the performance's line
    piece_id = f"{SOURCE}/{os.path.splitext(rel)[0]}"
    try:
      pairs, align_remark = _pairs(os.path.join(folder, rel), rel, piece_id, grid,
                                   deadpan_velocity, scores.get(rel))
    except (duv_pairs.CorruptMidiError, match_file.MatchFormatError,
            duv_features.FeatureError, ValueError) as e:
      reason = str(e).replace(os.path.join(folder, rel) + ": ", "")
      lines.append(FileLine(rel, 0, 0, None, reason.replace(os.path.join(folder, ""), "")))
      continue
    if not pairs:
      removed["files_without_notes"] += 1
      lines.append(FileLine(rel, 0, 0, None, "no notes"))
      continue
    picked, remark = _pick(pairs, instrument)
    if not picked:
      lines.append(FileLine(rel, 0, 0, None, f"no {instrument} track (tracks: "
                                              f"{', '.join(sorted({p.instrument for p in pairs}))})"))
      continue
    kept, reasons = [], []
    for pair in picked:
      row = duv_manifest.pair_to_row(pair, duv_manifest.split_of(piece_id, valid_fraction))
      reason = duv_manifest.filter_reason(row, filters)
      if reason is None:
        kept.append((pair, row))
      else:
        removed[reason] += 1
        reasons.append(f"track {pair.track} ({row['n_notes']} notes, {row['duration_sec']:.1f} s) "
                       f"fails {reason}")
    rows += [row for _, row in kept]
    note = "; ".join([r for r in (align_remark, remark) if r] + reasons)
    lines.append(FileLine(rel, len(kept), sum(r["n_notes"] for _, r in kept),
                          float(np.mean([p.grid_fit for p, _ in kept])) if kept else None, note))
  return rows, removed, lines


def build_from_dir(folder: str, config: duv_build.BuildConfig, instrument: str, grid: str
                   ) -> tuple[dict, list[FileLine]]:
  """Rows of the folder's takes written as `duv_build` writes its data set; the report and lines.

  When the hash split leaves no training piece, every piece trains: the scaler needs training
  notes, and DUV training validates on each track's tail anyway (`lora_jax.duv.splits`).
  """
  rows, removed, lines = takes_rows(folder, instrument, grid, config.filters,
                                    config.valid_fraction, config.deadpan_velocity)
  if not rows:
    raise duv_manifest.ManifestError(
        f"no track of {folder} was kept: " + "; ".join(line.text() for line in lines))
  if not any(r["split"] == "train" for r in rows):
    rows = [dict(r, split="train") for r in rows]
  report = duv_build.write_duv_dataset(
      config, rows, removed, {"from_dir": os.path.abspath(folder), "instrument": instrument,
                              "grid": grid, "files": [line.text() for line in lines]})
  return report, lines
