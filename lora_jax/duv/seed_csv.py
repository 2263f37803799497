"""The DUV seed's note CSV, and its `train_duv.py --csv-train ...` command as a shorthand.

The CSV: a header line, then one line per note. Columns (any order):
  file              the piece the note is from; its tracks share it, and no split cuts a piece
  track             optional, an integer: the piece's track (default 0)
  onset_beats       the written onset, in beats from the piece's start
  dur_beats         the written duration, in beats
  pitch             MIDI pitch, 0-127
  velocity          the velocity played, 1-127 (a target)
  played_dur_beats  the duration played, in beats (a target)
  downbeat          optional, 0 or 1: 1 where a bar starts at this note (default: a bar every 4
                    beats from beat 0)
  written_velocity  optional, the velocity written (default 64, deadpan)
  instrument        optional, the track's instrument, e.g. 'guitar' (default 'unknown')
Columns named as DUV features (`duv_features.ALL_FEATURES`: beat_pos, prev_ioi, ...) are accepted
and not read: every feature is computed again from the written notes, as at inference. Any other
column is an error. Times are in beats only; `duration_sec` is recorded at a nominal 120 qpm.

The command: `--csv-train` rows train, `--csv-valid` pieces are held out (`duv.heldout`: never
trained on; `launch/eval_duv.py` scores them); as in every DUV run here, checkpoints are chosen on
the last `duv.valid_tail` of each training track (`lora_jax.duv.splits`). `--out` is the bundle
folder written, `--stats-json` receives its feature statistics (the scaler), and `--epochs` sets
`duv.epochs` of the config (configs/duv/base.py unless `--config`).
"""

import csv
import os
import re
import shutil
from typing import Any

import numpy as np

from lora_jax import atomic
from lora_jax.data.duv import features as duv_features
from lora_jax.data.duv import manifest as duv_manifest
from lora_jax.data.duv import pairs as duv_pairs
from lora_jax.duv import bundle, training

REQUIRED = ("file", "onset_beats", "dur_beats", "pitch", "velocity", "played_dur_beats")
OPTIONAL = ("track", "downbeat", "written_velocity", "instrument")
NOMINAL_QPM = 120.0
SOURCE = "csv"


def _number(path: str, line: int, column: str, text: str, integer: bool = False) -> float:
  try:
    value = int(text) if integer else float(text)
  except ValueError:
    raise duv_manifest.ManifestError(f"{path}:{line}: column {column!r} is {text!r}, not "
                                     f"{'int' if integer else 'float'}") from None
  if not np.isfinite(value):
    raise duv_manifest.ManifestError(f"{path}:{line}: column {column!r} is {text!r}")
  return value


def read_note_csv(path: str, split: str) -> list[dict]:
  """Manifest rows (one per track) of a note CSV, in `split`."""
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    columns = reader.fieldnames or []
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
      raise duv_manifest.ManifestError(f"{path}: no column {missing[0]!r}; a note CSV has "
                                       f"{', '.join(REQUIRED)} (and optionally "
                                       f"{', '.join(OPTIONAL)})")
    unknown = [c for c in columns if c not in REQUIRED + OPTIONAL + duv_features.ALL_FEATURES]
    if unknown:
      raise duv_manifest.ManifestError(f"{path}: unknown column {unknown[0]!r}")
    tracks: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for line, raw in enumerate(reader, 2):
      if None in raw or None in raw.values():
        raise duv_manifest.ManifestError(f"{path}:{line}: {len(columns)} columns in the header, "
                                         f"another number of values here")
      note = {"line": line,
              "onset": _number(path, line, "onset_beats", raw["onset_beats"]),
              "dur": _number(path, line, "dur_beats", raw["dur_beats"]),
              "pitch": int(_number(path, line, "pitch", raw["pitch"], True)),
              "velocity": int(_number(path, line, "velocity", raw["velocity"], True)),
              "played": _number(path, line, "played_dur_beats", raw["played_dur_beats"]),
              "downbeat": int(_number(path, line, "downbeat", raw.get("downbeat") or "0", True)),
              "written": int(_number(path, line, "written_velocity",
                                     raw.get("written_velocity") or
                                     str(duv_pairs.DEADPAN_VELOCITY), True)),
              "instrument": raw.get("instrument") or "unknown"}
      if not (0 <= note["pitch"] <= 127 and 1 <= note["velocity"] <= 127
              and 0 <= note["written"] <= 127):
        raise duv_manifest.ManifestError(f"{path}:{line}: pitch {note['pitch']}, velocity "
                                         f"{note['velocity']} or written_velocity "
                                         f"{note['written']} is outside MIDI's range")
      if note["dur"] <= 0 or note["played"] <= 0:
        raise duv_manifest.ManifestError(f"{path}:{line}: durations must be > 0 beats")
      if not raw["file"]:
        raise duv_manifest.ManifestError(f"{path}:{line}: column 'file' is empty")
      track = int(_number(path, line, "track", raw.get("track") or "0", True))
      tracks.setdefault((raw["file"], track), []).append(note)
  if not tracks:
    raise duv_manifest.ManifestError(f"{path}: no notes")
  rows = []
  for (file, track), notes in sorted(tracks.items()):
    notes.sort(key=lambda n: (n["onset"], n["pitch"]))
    onset = np.array([n["onset"] for n in notes])
    marked = sorted({n["onset"] for n in notes if n["downbeat"]})
    downbeats = np.array(marked) if marked else np.arange(0.0, onset.max() + 4.0, 4.0)
    written = duv_features.WrittenNotes(
        onset, np.array([n["dur"] for n in notes]), np.array([n["pitch"] for n in notes]),
        np.array([n["written"] for n in notes]), downbeats)
    beats = float(np.max(onset + written.dur_beats) - onset.min())
    pair = duv_pairs.DeadpanPair(
        file=os.path.basename(path), source=SOURCE, piece_id=f"{SOURCE}/{file}",
        instrument=notes[0]["instrument"], track=track, grid_source="score", grid_fit=1.0,
        snap_beats=0.0, duration_sec=beats * 60.0 / NOMINAL_QPM, notes=written,
        target_velocity=np.array([n["velocity"] for n in notes]),
        target_dur_beats=np.array([n["played"] for n in notes]))
    rows.append(duv_manifest.pair_to_row(pair, split))
  return rows


def train_from_csv(config: Any, csv_train: str, csv_valid: str, stats_json: str, out: str,
                   epochs: int | None, workdir: str) -> str:
  """The seed's command: manifest from the CSVs, a base trained on it, its stats; returns --out."""
  train_rows, valid_rows = read_note_csv(csv_train, "train"), read_note_csv(csv_valid, "valid")
  both = sorted({r["piece_id"] for r in train_rows} & {r["piece_id"] for r in valid_rows})
  if both:
    raise duv_manifest.ManifestError(f"piece {both[0]!r} is in both {csv_train} and {csv_valid}")
  os.makedirs(workdir, exist_ok=True)
  core = os.path.join(workdir, "seed_csv_manifest.jsonl")
  enriched = os.path.join(workdir, "seed_csv_manifest_enriched.jsonl")
  duv_manifest.write_manifest(core, train_rows + valid_rows)
  duv_manifest.enrich_manifest(core, enriched)
  config.duv.manifest = enriched
  config.duv.bundle = out
  config.duv.heldout = "^(" + "|".join(re.escape(p) for p in
                                       sorted({r["piece_id"] for r in valid_rows})) + ")$"
  if epochs is not None:
    config.duv.epochs = epochs
  path = training.train(config, workdir, "full")
  with atomic.atomic_path(stats_json) as tmp:
    shutil.copyfile(os.path.join(path, bundle.SCALER_FILE), tmp)
  return path
