"""The DUV data build, end to end: cache -> manifest -> enriched manifest -> scaler -> windows.

Files written to `out_dir`, each atomically:
  duv_manifest.jsonl           core features (duv_features.CORE_FEATURES)
  duv_manifest_enriched.jsonl  plus the hint features (duv_features.HINT_FEATURES)
  duv_scaler.json              per-column mean/std of all features, train split only
  duv_windows_<split>.npz      phrase_windows of each split, inputs scaled
  duv_report.json              counts per source and split, filter removals, baselines
"""

import dataclasses
import json
import os

import numpy as np

from lora_jax import atomic, errors
from lora_jax.data.duv import baselines as duv_baselines
from lora_jax.data.duv import features as duv_features
from lora_jax.data.duv import manifest as duv_manifest
from lora_jax.data.duv import pairs as duv_pairs


@dataclasses.dataclass(frozen=True)
class BuildConfig:
  """Everything the build reads."""
  cache_dir: str
  out_dir: str
  sources: tuple[str, ...] = ("maestro", "pop909", "mozart")
  # The seed's max_duration_sec=600 drops 6 of the 10 MAESTRO recordings (15-39 minutes long).
  filters: duv_manifest.Filters = duv_manifest.Filters(max_duration_sec=3600.0)
  # Share of pieces held out. The seed's 0.1 holds out 1 of the 15 fetched pieces (Maestro_7,
  # 27 minutes long, which the seed's max_duration_sec then drops): nothing would be held out.
  valid_fraction: float = 0.2
  max_len: int = 256  # notes per window
  stride: int = 128  # notes between window starts
  deadpan_velocity: int = duv_pairs.DEADPAN_VELOCITY

  def __post_init__(self):  # checked before anything is read or written
    if not self.sources:
      raise errors.UserError("no sources given: pass --sources, e.g. maestro,pop909,mozart")
    for name, value in (("max_len", self.max_len), ("stride", self.stride),
                        ("min_notes", self.filters.min_notes)):
      if value < 1:
        raise errors.UserError(f"{name} {value} must be >= 1")
    errors.check_finite(self.valid_fraction, "valid_fraction", low=0.0, high=1.0)
    if self.valid_fraction >= 1.0:
      raise errors.UserError(f"valid_fraction {self.valid_fraction:g} must be < 1: nothing "
                             f"would be left to train on")
    low = errors.check_finite(self.filters.min_duration_sec, "min_duration_sec", low=0.0)
    high = errors.check_finite(self.filters.max_duration_sec, "max_duration_sec", low=0.0)
    if high < low:
      raise errors.UserError(f"max_duration_sec {high:g} is below min_duration_sec {low:g}")
    if not 1 <= self.deadpan_velocity <= 127:
      raise errors.UserError(f"deadpan_velocity {self.deadpan_velocity} is not a MIDI velocity "
                             f"1..127")


def _counts(rows: list[dict]) -> dict:
  out = {}
  for row in rows:
    entry = out.setdefault(row["source"], {}).setdefault(row["split"], {"pieces": set(),
                                                                         "tracks": 0, "notes": 0})
    entry["pieces"].add(row["piece_id"])
    entry["tracks"] += 1
    entry["notes"] += row["n_notes"]
  for by_split in out.values():
    for entry in by_split.values():
      entry["pieces"] = len(entry["pieces"])
  return out


def build_duv_dataset(config: BuildConfig) -> dict:
  """Build every file of the DUV data set from the performance cache; returns the report."""
  rows, removed = duv_manifest.build_rows(
      config.cache_dir, config.sources, config.filters, config.valid_fraction,
      deadpan_velocity=config.deadpan_velocity)
  if not rows:
    raise duv_manifest.ManifestError(f"every track of {config.sources} was filtered out: {removed}")
  return write_duv_dataset(config, rows, removed)


def _baselines(rows: list[dict]) -> dict:
  """The baseline figures, or why there are none (a small folder may lack a split or a piece)."""
  out = {}
  for name, fn in (("baselines", duv_baselines.heldout_baselines),
                   ("baselines_leave_one_piece_out", duv_baselines.leave_one_piece_out_baselines)):
    try:
      out[name] = fn(rows)
    except ValueError as e:
      out[name] = {"skipped": str(e)}
  return out


def write_duv_dataset(config: BuildConfig, rows: list[dict], removed: dict,
                      extra_report: dict | None = None) -> dict:
  """Write the manifests, scaler, windows and report of `rows` into `config.out_dir`."""
  os.makedirs(config.out_dir, exist_ok=True)
  core_path = os.path.join(config.out_dir, "duv_manifest.jsonl")
  enriched_path = os.path.join(config.out_dir, "duv_manifest_enriched.jsonl")
  duv_manifest.write_manifest(core_path, rows)
  rows = duv_manifest.enrich_manifest(core_path, enriched_path)
  features = duv_features.ALL_FEATURES
  scaler = duv_manifest.fit_scaler(rows, features)
  n_train = sum(r["n_notes"] for r in rows if r["split"] == "train")
  duv_manifest.save_scaler(os.path.join(config.out_dir, "duv_scaler.json"), scaler, n_train)
  windows = {}
  for split in sorted({r["split"] for r in rows}):
    split_rows = [r for r in rows if r["split"] == split]
    arrays = duv_manifest.phrase_windows(split_rows, config.max_len, config.stride, features,
                                         scaler)
    with atomic.atomic_path(os.path.join(config.out_dir, f"duv_windows_{split}.npz")) as tmp:
      with open(tmp, "wb") as f:
        np.savez(f, **arrays, columns=np.array(duv_manifest.feature_columns(features)))
    windows[split] = {"windows": len(arrays["mask"]),
                      "note_slots": int(arrays["mask"].sum())}  # overlapping windows repeat notes
  report = {
      "config": dataclasses.asdict(config),
      **(extra_report or {}),
      "filters_removed_tracks": removed,
      "kept": _counts(rows),
      "windows": windows,
      **_baselines(rows),
  }
  text = json.dumps(report, indent=1)
  atomic.write_text(os.path.join(config.out_dir, "duv_report.json"), text + "\n")
  return json.loads(text)  # what the file holds: tuples read back as lists
