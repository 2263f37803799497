"""DUV training around the shared loop: manifest rows in, a DUV bundle or an adapter out.

The loop (`lora_jax.train.loop`) trains any family from arrays. What is DUV's own is here:
  before  the rows of one instrument (a regex over the manifest's `instrument`), a split by piece
          (`train_split` of the pieces, by a hash of the piece id, as `duv_manifest.split_of`),
          the scaler (a base fits its own on its train split; an adapter takes its base bundle's,
          so it sees features exactly as the base saw them), phrase windows written as the
          family's arrays, and `training.steps` from `epochs`;
  after   what `lora_jax.duv` loads: a base becomes the bundle folder, an adapter becomes
          `<bundle>/<adapter_name>.lora`, loaded back through the checks inference runs, so an
          adapter that would not fit fails here and not in the middle of a song.

The config file is the loop's, plus a `duv` group (`DuvData`). The loop fields this fills are
declared in the config as placeholders: `data.path`, `data.val_path`, `training.steps` and, for
an adapter, `training.base_params` (the bundle's weights).
"""

import dataclasses
import os
import re
import shutil
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from lora_jax import atomic, families
from lora_jax.data import duv_features, duv_manifest
from lora_jax.duv import bundle
from lora_jax.train import config as config_lib
from lora_jax.train import loop


@dataclasses.dataclass(frozen=True)
class DuvData:
  """The `config.duv` group."""

  manifest: str  # enriched JSONL manifest (launch/build_duv_manifest.py writes one)
  instrument: str  # regex searched in each row's `instrument`; '' keeps every row
  train_split: float  # share of pieces trained on; the others validate
  epochs: int  # passes over the train windows; sets training.steps
  stride: int  # notes between window starts (the window is model.seq_len notes)
  bundle: str  # DUV bundle folder: a base run writes it, an adapter run reads its base from it
  adapter_name: str  # an adapter run writes <bundle>/<adapter_name>.lora

  def __post_init__(self):
    if not 0.0 < self.train_split < 1.0:
      raise config_lib.ConfigError(f"duv.train_split must be in (0, 1), got {self.train_split}")
    if self.epochs < 1:
      raise config_lib.ConfigError(f"duv.epochs must be >= 1, got {self.epochs}")


@dataclasses.dataclass(frozen=True)
class Prepared:
  """A run ready for the loop."""

  config: config_lib.TrainConfig
  data: DuvData
  scaler: duv_manifest.Scaler
  n_train_notes: int
  n_windows: dict[str, int]  # per split


def _split_rows(data: DuvData, features) -> tuple[list[dict], list[dict]]:
  rows = duv_manifest.read_manifest(data.manifest, features)
  pattern = re.compile(data.instrument)
  kept = [r for r in rows if pattern.search(r["instrument"])]
  if not kept:
    present = sorted({r["instrument"] for r in rows})
    raise ValueError(f"duv.instrument {data.instrument!r} matches no row of {data.manifest}; "
                     f"its instruments are {present}")
  valid_fraction = 1.0 - data.train_split
  for r in kept:
    r["split"] = duv_manifest.split_of(r["piece_id"], valid_fraction)
  train = [r for r in kept if r["split"] == "train"]
  valid = [r for r in kept if r["split"] == "valid"]
  if not train or not valid:
    pieces = len({r["piece_id"] for r in kept})
    raise ValueError(f"duv.train_split {data.train_split} of {pieces} pieces leaves "
                     f"{len(train)} train and {len(valid)} validation tracks; both need one")
  return train, valid


def _write_windows(path: str, rows, seq_len: int, stride: int, scaler) -> int:
  arrays = duv_manifest.phrase_windows(rows, seq_len, stride, scaler.features, scaler)
  with atomic.atomic_path(path) as tmp, open(tmp, "wb") as f:
    np.savez(f, inputs=arrays["inputs"], targets=arrays["targets"], mask=arrays["mask"])
  return len(arrays["mask"])


def _check_same_model(model_config, folder: str) -> None:
  saved = dataclasses.asdict(bundle.read_config(os.path.join(folder, bundle.CONFIG_FILE)))
  wanted = dataclasses.asdict(model_config)
  diff = [f"{k}: bundle {saved[k]!r}, config {wanted[k]!r}" for k in saved
          if k not in ("dtype", "dropout") and saved[k] != wanted[k]]
  if diff:
    raise ValueError(f"config.model differs from the base in {folder}: {'; '.join(diff)}")


def prepare(config_dict: Mapping[str, Any], workdir: str) -> Prepared:
  """The loop's config with data, steps and base filled in; window arrays written to workdir."""
  mapping = config_dict.to_dict() if hasattr(config_dict, "to_dict") else dict(config_dict)
  missing = [k for k in ("duv", "family", "model", "data", "training") if k not in mapping]
  if missing:
    raise config_lib.ConfigError(f"a DUV training config needs groups {missing} (see "
                                 "configs/duv/base.py)")
  data = config_lib.from_mapping(DuvData, mapping.pop("duv"), "config.duv")
  lora_run = mapping["training"]["type"] == "lora"
  model_cls = families.lookup(mapping["family"]).config_cls
  model = config_lib.from_mapping(model_cls, mapping["model"], "config.model")
  if lora_run:
    _check_same_model(model.model_config(), data.bundle)
    scaler = duv_manifest.load_scaler(os.path.join(data.bundle, bundle.SCALER_FILE))
    train, valid = _split_rows(data, scaler.features)
    mapping["training"]["base_params"] = os.path.join(data.bundle, bundle.PARAMS_FILE)
  else:
    train, valid = _split_rows(data, duv_features.ALL_FEATURES)
    scaler = duv_manifest.fit_scaler(train, duv_features.ALL_FEATURES)
  columns = len(duv_manifest.feature_columns(scaler.features))
  if columns != model.n_features:
    raise ValueError(f"the scaler's {columns} feature columns differ from model.n_features "
                     f"{model.n_features}")
  os.makedirs(workdir, exist_ok=True)
  paths = {s: os.path.join(workdir, f"duv_{s}.npz") for s in ("train", "valid")}
  n_windows = {s: _write_windows(paths[s], rows, model.seq_len, data.stride, scaler)
               for s, rows in (("train", train), ("valid", valid))}
  batch_size = mapping["data"]["batch_size"]
  steps_per_epoch = n_windows["train"] // batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"{n_windows['train']} train windows do not fill one batch of {batch_size}")
  mapping["data"].update(path=paths["train"], val_path=paths["valid"])
  mapping["training"]["steps"] = data.epochs * steps_per_epoch
  n_train_notes = sum(len(r["notes"]["onset_beats"]) for r in train)
  return Prepared(config_lib.from_config_dict(mapping), data, scaler, n_train_notes, n_windows)


def finish(prepared: Prepared, result: loop.Result) -> str:
  """Write the bundle (base) or the adapter beside its base; returns what was written."""
  if result.status == "stopped":
    raise RuntimeError(f"training stopped at step {result.step} before it finished; run it "
                       "again with the same workdir to resume")
  data, config = prepared.data, prepared.config
  if config.training.type == "full":
    bundle.save_bundle(data.bundle, result.params, config.model.model_config(), prepared.scaler,
                       prepared.n_train_notes)
    bundle.load_model(data.bundle)
    return data.bundle
  path = os.path.join(data.bundle, data.adapter_name + bundle.ADAPTER_SUFFIX)
  with atomic.atomic_path(path) as tmp:
    shutil.copyfile(result.export_path, tmp)
  bundle.load_model(path)  # the checks inference runs: right base, every module where it says
  return path


def train(config_dict: Mapping[str, Any], workdir: str, training_type: str,
          devices: Sequence[jax.Device] | None = None) -> str:
  """Prepare, train with the shared loop (on `devices`, default all), finish.

  `training_type` ('full' or 'lora') must be the config's: each program trains one kind.
  """
  prepared = prepare(config_dict, workdir)
  if prepared.config.training.type != training_type:
    raise ValueError(f"this program trains training.type {training_type!r}; the config says "
                     f"{prepared.config.training.type!r}")
  result = loop.train(prepared.config, os.path.join(workdir, "run"), devices=devices)
  return finish(prepared, result)
