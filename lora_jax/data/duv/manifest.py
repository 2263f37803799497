"""JSONL manifest of DUV pairs, its filters, split, enrichment, scaler and phrase windows.

One line per track (one piece can have several): identity (`file`, `source`, `piece_id`,
`instrument`, `track`, `split`), grid provenance (`grid_source`, `grid_is_real`, `grid_fit`,
`snap_beats`), `n_notes`, `duration_sec`, the deadpan notes the features come from (`notes`:
onset_beats, dur_beats, pitch, velocity; `downbeat_beats`; `sections`), `features` (name -> per-
note list) and `targets` (`velocity`, `dur_beats`: the human performance). Features and targets
are kept apart because `dur_beats` is both: the written duration in, the played one out.

The split is by piece (a hash of `piece_id`), never by window, so no piece leaks across it.
"""

import dataclasses
import hashlib
import json
import os
from typing import Iterable, Sequence

import numpy as np

from lora_jax import atomic, errors
from lora_jax.data.duv import features as duv_features
from lora_jax.data.duv import pairs as duv_pairs

SOURCE_SUFFIX = {"maestro": ".mid", "pop909": ".mid", "mozart": ".match"}
FETCH_COMMAND = "bash scripts/fetch_performances.sh"
_ROW_KEYS = ("file", "source", "piece_id", "instrument", "track", "split", "notes",
             "downbeat_beats", "sections", "features", "targets")


class ManifestError(errors.UserError):
  """A manifest that cannot be used; the message names the file and line (or row)."""


class MissingFeatureError(ManifestError):
  """A manifest row lacks a feature that was asked for."""


class PerformanceCacheMissingError(FileNotFoundError):
  """The fetched performance cache is not there; the message says how to fetch it."""


@dataclasses.dataclass(frozen=True)
class Filters:
  """Track filters from the DUV seed; a track failing any of them is left out."""
  min_notes: int = 64
  min_duration_sec: float = 3.0
  max_duration_sec: float = 600.0


def cache_files(cache_dir: str, sources: Sequence[str]) -> list[tuple[str, str]]:
  """(source, path relative to cache_dir) of every cached file of `sources`, sorted."""
  out = []
  for source in sources:
    if source not in SOURCE_SUFFIX:
      raise ValueError(f"unknown source {source!r}; known: {sorted(SOURCE_SUFFIX)}")
    folder = os.path.join(cache_dir, source)
    names = sorted(n for n in os.listdir(folder) if n.endswith(SOURCE_SUFFIX[source])) \
        if os.path.isdir(folder) else []
    if not names:
      raise PerformanceCacheMissingError(
          f"no {SOURCE_SUFFIX[source]} files in {folder}: fetch the performance corpus first "
          f"with `{FETCH_COMMAND} {cache_dir}`")
    out += [(source, f"{source}/{name}") for name in names]
  return out


def split_of(piece_id: str, valid_fraction: float) -> str:
  """'valid' for a fixed pseudo-random `valid_fraction` of piece ids (sha256), else 'train'."""
  if not 0.0 <= valid_fraction < 1.0:
    raise ValueError(f"valid_fraction {valid_fraction} is not in [0, 1)")
  draw = int.from_bytes(hashlib.sha256(piece_id.encode()).digest()[:8], "big") / 2.0**64
  return "valid" if draw < valid_fraction else "train"


def _floats(values: np.ndarray) -> list:
  return (np.round(np.asarray(values, dtype=np.float64), 6) + 0.0).tolist()  # + 0.0: no "-0.0"


def written_notes(row: dict) -> duv_features.WrittenNotes:
  """The deadpan notes stored in a manifest row."""
  notes = row["notes"]
  return duv_features.WrittenNotes(
      np.asarray(notes["onset_beats"], dtype=np.float64),
      np.asarray(notes["dur_beats"], dtype=np.float64),
      np.asarray(notes["pitch"], dtype=np.int64), np.asarray(notes["velocity"], dtype=np.int64),
      np.asarray(row["downbeat_beats"], dtype=np.float64),
      tuple((float(b), str(label)) for b, label in row["sections"]))


def _with_features(row: dict, names: Iterable[str]) -> dict:
  computed = duv_features.compute_features(written_notes(row), list(names))
  return {**row, "features": {**row["features"], **{k: _floats(v) for k, v in computed.items()}}}


def pair_to_row(pair: duv_pairs.DeadpanPair, split: str,
                features: Sequence[str] = duv_features.CORE_FEATURES) -> dict:
  """The manifest row of a pair, with `features` computed from its stored (rounded) notes."""
  n = pair.notes
  row = {
      "file": pair.file, "source": pair.source, "piece_id": pair.piece_id,
      "instrument": pair.instrument, "track": pair.track, "split": split,
      "grid_source": pair.grid_source, "grid_is_real": pair.grid_is_real,
      "grid_fit": round(pair.grid_fit, 4), "snap_beats": round(pair.snap_beats, 4),
      "n_notes": len(n.onset_beats), "duration_sec": round(pair.duration_sec, 3),
      "notes": {"onset_beats": _floats(n.onset_beats), "dur_beats": _floats(n.dur_beats),
                "pitch": n.pitch.tolist(), "velocity": n.velocity.tolist()},
      "downbeat_beats": _floats(n.downbeat_beats),
      "sections": [[float(b), label] for b, label in n.sections],
      "features": {},
      "targets": {"velocity": np.asarray(pair.target_velocity).tolist(),
                  "dur_beats": _floats(pair.target_dur_beats)},
  }
  return _with_features(row, features)


def filter_reason(row: dict, filters: Filters) -> str | None:
  """Name of the first filter the row fails, or None."""
  if row["n_notes"] < filters.min_notes:
    return "min_notes"
  if row["duration_sec"] < filters.min_duration_sec:
    return "min_duration_sec"
  if row["duration_sec"] > filters.max_duration_sec:
    return "max_duration_sec"
  return None


def build_rows(cache_dir: str, sources: Sequence[str], filters: Filters, valid_fraction: float,
               features: Sequence[str] = duv_features.CORE_FEATURES,
               deadpan_velocity: int = duv_pairs.DEADPAN_VELOCITY) -> tuple[list[dict], dict]:
  """Manifest rows of the cached files that pass `filters`, and counts of what each removed."""
  rows = []
  removed = {"files_without_notes": 0, "min_notes": 0, "min_duration_sec": 0,
             "max_duration_sec": 0}
  for source, rel in cache_files(cache_dir, sources):
    pairs = duv_pairs.pairs_from_file(os.path.join(cache_dir, rel), rel, source, deadpan_velocity)
    removed["files_without_notes"] += not pairs
    for pair in pairs:
      row = pair_to_row(pair, split_of(pair.piece_id, valid_fraction), features)
      reason = filter_reason(row, filters)
      if reason is None:
        rows.append(row)
      else:
        removed[reason] += 1
  return rows, removed


def write_manifest(path: str, rows: Sequence[dict]) -> None:
  """Write rows as JSONL, atomically."""
  if not rows:
    raise ManifestError(f"refusing to write an empty manifest to {path}")
  atomic.write_text(path, "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows))


# Each row's keys and their JSON types: a row is checked as a schema where it is read, so a
# mistyped field is one error naming its line, not a TypeError deep in the features.
_ROW_TYPES = {"file": str, "source": str, "piece_id": str, "instrument": str, "track": int,
              "split": str, "notes": dict, "downbeat_beats": list, "sections": list,
              "features": dict, "targets": dict}
_NOTE_KEYS = ("onset_beats", "dur_beats", "pitch", "velocity")


def _numbers(values, where: str) -> None:
  try:
    array = np.asarray(values, dtype=np.float64)
  except (TypeError, ValueError):
    raise ManifestError(f"{where} must hold numbers, got {str(values)[:60]}") from None
  if not np.isfinite(array).all():
    raise ManifestError(f"{where} holds NaN or infinity")


def check_row(row: dict, features: Sequence[str], where: str) -> None:
  """Raise if the row is not a manifest row: a missing or mistyped key, a file outside the cache,
  a requested feature absent, lists of unequal length or holding other than finite numbers."""
  if not isinstance(row, dict):
    raise ManifestError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
  for key in _ROW_KEYS:
    if key not in row:
      raise ManifestError(f"{where}: row has no {key!r} key")
  for key, kind in _ROW_TYPES.items():
    if key in row and (not isinstance(row[key], kind) or isinstance(row[key], bool)):
      raise ManifestError(f"{where}: {key!r} must be a JSON {kind.__name__}, got "
                          f"{type(row[key]).__name__} {str(row[key])[:40]}")
  file = row["file"]
  if os.path.isabs(file) or ".." in file.replace("\\", "/").split("/"):
    raise ManifestError(f"{where}: file {file!r} points outside the performance cache")
  for key in _NOTE_KEYS:
    if not isinstance(row["notes"].get(key), list):
      raise ManifestError(f"{where}: notes.{key} must be a list of numbers")
  n = len(row["notes"]["onset_beats"])
  for name in features:
    if name not in row["features"]:
      raise MissingFeatureError(
          f"{where} (file {row['file']!r}): no feature {name!r}; present: "
          f"{sorted(row['features'])}; hint features come from enrich_manifest")
  for group in ("notes", "targets", "features"):
    for name, values in row[group].items():
      if not isinstance(values, list) or len(values) != n:
        raise ManifestError(f"{where} (file {row['file']!r}): {group}.{name} has "
                            f"{len(values) if isinstance(values, list) else values!r} values for "
                            f"{n} notes")
      _numbers(values, f"{where}: {group}.{name}")
  _numbers(row["downbeat_beats"], f"{where}: downbeat_beats")
  for section in row["sections"]:
    if (not isinstance(section, list) or len(section) != 2 or not isinstance(section[1], str)):
      raise ManifestError(f"{where}: sections must be [beat, label] pairs, got {section!r:.60}")
    _numbers(section[0], f"{where}: sections")
  for name in duv_features.TARGETS:
    if name not in row["targets"]:
      raise ManifestError(f"{where} (file {row['file']!r}): no target {name!r}")


def read_manifest(path: str, features: Sequence[str] = ()) -> list[dict]:
  """Rows of a JSONL manifest, each checked to hold `features`."""
  rows, seen = [], {}
  with open(path, encoding="utf-8", errors="strict") as f:
    try:
      lines = list(f)
    except UnicodeDecodeError as e:
      raise ManifestError(f"{path}: not UTF-8 text ({e})") from None
  for lineno, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      raise ManifestError(f"{path}:{lineno}: not valid JSON ({e})") from e
    check_row(row, features, f"{path}:{lineno}")
    # A track is a piece's file and track number; the seed's note CSV holds many pieces in one
    # file, told apart by piece_id.
    key = (row["piece_id"], row["file"], row["track"])
    if key in seen:  # the same track twice would be trained on twice, and split apart
      raise ManifestError(f"{path}:{lineno}: track {row['track']} of {row['file']} is also on "
                          f"line {seen[key]}")
    seen[key] = lineno
    rows.append(row)
  if not rows:
    raise ManifestError(f"{path}: manifest has no rows")
  return rows


def enrich_manifest(in_path: str, out_path: str,
                    names: Sequence[str] = duv_features.HINT_FEATURES) -> list[dict]:
  """Add (or recompute) derived features of every row of a manifest; write it atomically."""
  rows = [_with_features(row, names) for row in read_manifest(in_path)]
  write_manifest(out_path, rows)
  return rows


@dataclasses.dataclass(frozen=True)
class Scaler:
  """Per-column mean/std of input features on the train split; constant columns are only centred."""
  features: tuple[str, ...]
  mean: np.ndarray  # [C] C = sum of feature widths
  std: np.ndarray  # [C]

  def apply(self, x: np.ndarray) -> np.ndarray:
    """(x - mean) / std over the last axis, std < 1e-8 read as 1."""
    return (x - self.mean) / np.where(self.std < 1e-8, 1.0, self.std)


def feature_columns(features: Sequence[str]) -> list[str]:
  """Column names of the window input: section_onehot expands to one column per label."""
  cols = []
  for name in features:
    cols += [f"section_onehot:{label}" for label in duv_features.SECTION_LABELS] \
        if name == "section_onehot" else [name]
  return cols


def _feature_matrix(row: dict, features: Sequence[str]) -> np.ndarray:
  n = len(row["notes"]["onset_beats"])
  return np.concatenate(
      [np.asarray(row["features"][name], dtype=np.float64).reshape(n, -1) for name in features],
      axis=1)


def fit_scaler(rows: Sequence[dict], features: Sequence[str]) -> Scaler:
  """Mean/std of each feature column over the notes of the train-split rows only."""
  train = [(i, r) for i, r in enumerate(rows) if r["split"] == "train"]
  if not train:
    raise ManifestError(f"no train rows among {len(rows)} rows to fit a scaler on")
  for i, row in train:
    check_row(row, features, f"row {i}")
  x = np.concatenate([_feature_matrix(r, features) for _, r in train])
  return Scaler(tuple(features), x.mean(axis=0), x.std(axis=0))


def save_scaler(path: str, scaler: Scaler, n_train_notes: int) -> None:
  """Write the scaler as JSON, atomically."""
  cols = feature_columns(scaler.features)
  atomic.write_text(path, json.dumps({
      "split": "train", "n_notes": n_train_notes, "features": list(scaler.features),
      "columns": cols, "mean": _floats(scaler.mean), "std": _floats(scaler.std),
      "constant_columns": [c for c, s in zip(cols, scaler.std) if s < 1e-8]}, indent=1) + "\n")


def load_scaler(path: str) -> Scaler:
  """Read a scaler JSON written by save_scaler."""
  with open(path) as f:
    blob = json.load(f)
  scaler = Scaler(tuple(blob["features"]), np.asarray(blob["mean"]), np.asarray(blob["std"]))
  if len(scaler.mean) != len(feature_columns(scaler.features)):
    raise ManifestError(f"{path}: {len(scaler.mean)} means for features {scaler.features}")
  return scaler


def phrase_windows(rows: Sequence[dict], max_len: int, stride: int,
                   features: Sequence[str] = duv_features.CORE_FEATURES,
                   scaler: Scaler | None = None) -> dict[str, np.ndarray]:
  """Windows of up to max_len consecutive notes of each row, starting every `stride` notes.

  Returns inputs [N, max_len, C] float32 (scaled when a scaler is given), targets
  [N, max_len, 2] float32 (velocity, dur_beats), mask [N, max_len] bool, and row/start [N]
  int32. A row's last window is the first that reaches its end; shorter windows are padded.
  """
  if max_len < 1 or not 1 <= stride <= max_len:
    raise ValueError(f"need max_len >= 1 and 1 <= stride <= max_len, got {max_len}, {stride}")
  if not rows:
    raise ManifestError("no manifest rows to cut into windows")
  if scaler is not None and scaler.features != tuple(features):
    raise ManifestError(f"scaler features {scaler.features} differ from {tuple(features)}")
  width = len(feature_columns(features))
  inputs, targets, mask, row_ids, starts = [], [], [], [], []
  for i, row in enumerate(rows):
    check_row(row, features, f"row {i}")
    x = _feature_matrix(row, features)
    x = scaler.apply(x) if scaler is not None else x
    y = np.stack([np.asarray(row["targets"][t], dtype=np.float64) for t in duv_features.TARGETS],
                 axis=1)
    for start in range(0, len(x), stride):
      end = min(start + max_len, len(x))
      pad = ((0, max_len - (end - start)), (0, 0))
      inputs.append(np.pad(x[start:end], pad))
      targets.append(np.pad(y[start:end], pad))
      mask.append(np.arange(max_len) < end - start)
      row_ids.append(i)
      starts.append(start)
      if end == len(x):
        break
  return {"inputs": np.asarray(inputs, np.float32).reshape(-1, max_len, width),
          "targets": np.asarray(targets, np.float32).reshape(-1, max_len, 2),
          "mask": np.asarray(mask, bool), "row": np.asarray(row_ids, np.int32),
          "start": np.asarray(starts, np.int32)}
