"""DUV training around the shared loop: manifest rows in, a DUV bundle or an adapter out.

The loop (`lora_jax.train.loop`) trains any family from arrays. What is DUV's own is here:
  before  the tracks (regexes over the manifest's `instrument` and `piece_id`), their split
          (`lora_jax.duv.splits`: held-out pieces never seen, every other track trained on its
          head and validated on its tail), the scaler (a base fits its own on its training notes;
          an adapter takes its base bundle's, so it sees features exactly as the base saw them),
          phrase windows written as the family's arrays, and `training.steps` from `epochs`;
  after   what `lora_jax.duv` loads: a base becomes the bundle folder, an adapter becomes
          `<bundle>/<adapter_name>.lora`, loaded back through the checks inference runs, so an
          adapter that would not fit fails here and not in the middle of a song. The weights
          are those the loop exported (`ckpt.export`: 'best', the evaluation with the lowest
          validation loss, or 'final'); the split record (`duv_split.json`, with the exported
          step) goes into the workdir for `lora_jax.duv.evaluate`.

The config file is the loop's, plus a `duv` group (`DuvData`). The loop fields this fills are
declared in the config as placeholders: `data.path`, `data.val_path`, `training.steps` and, for
an adapter, `training.base_params` (the bundle's weights).
"""

import dataclasses
import os
import shutil
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from lora_jax import atomic, errors, families
from lora_jax.data.duv import features as duv_features
from lora_jax.data.duv import manifest as duv_manifest
from lora_jax.duv import bundle, splits
from lora_jax.interop import flax_weights
from lora_jax.train import config as config_lib
from lora_jax.train import exit_status
from lora_jax.train import loop


@dataclasses.dataclass(frozen=True)
class DuvData:
  """The `config.duv` group."""

  manifest: str  # enriched JSONL manifest (launch/build_duv_manifest.py writes one)
  instrument: str  # regex searched in each row's `instrument`; '' keeps every row
  pieces: str  # regex searched in each row's `piece_id` ("maestro/Maestro_6"); '' keeps all
  heldout: str  # regex over piece ids: test pieces, never trained or validated on; '' none
  features: tuple[str, ...]  # model inputs (duv_features names); an adapter's must be its base's
  valid_tail: float  # share of each training track's notes, at its end, that validates
  epochs: int  # passes over the train windows; sets training.steps
  stride: int  # notes between window starts (the window is model.seq_len notes)
  bundle: str  # DUV bundle folder: a base run writes it, an adapter run reads its base from it
  adapter_name: str  # an adapter run writes <bundle>/<adapter_name>.lora

  def __post_init__(self):
    if not 0.0 < self.valid_tail < 1.0:
      raise config_lib.ConfigError(f"duv.valid_tail must be in (0, 1), got {self.valid_tail}")
    if self.epochs < 1:
      raise config_lib.ConfigError(f"duv.epochs must be >= 1, got {self.epochs}")
    if self.stride < 1:
      raise config_lib.ConfigError(f"duv.stride must be >= 1, got {self.stride}")
    if self.adapter_name:  # it becomes a file name in the bundle folder
      errors.check_name(self.adapter_name, "duv.adapter_name")
    for name in self.features:
      if name not in duv_features.ALL_FEATURES:
        raise config_lib.ConfigError(f"duv.features names {name!r}; known: "
                                     f"{list(duv_features.ALL_FEATURES)}")


@dataclasses.dataclass(frozen=True)
class Prepared:
  """A run ready for the loop."""

  config: config_lib.TrainConfig
  data: DuvData
  scaler: duv_manifest.Scaler
  parts: splits.Split
  n_train_notes: int
  n_windows: dict[str, int]  # per split


def _windows(rows, seq_len: int, stride: int, scaler) -> dict[str, np.ndarray]:
  arrays = duv_manifest.phrase_windows(rows, seq_len, stride, scaler.features, scaler)
  written = duv_manifest.phrase_windows(rows, seq_len, stride, ("dur_beats",))  # unscaled beats
  return {"inputs": arrays["inputs"], "targets": arrays["targets"], "mask": arrays["mask"],
          "written_dur": written["inputs"][..., 0]}


def _write_windows(path: str, arrays: dict[str, np.ndarray]) -> None:
  with atomic.atomic_path(path) as tmp, open(tmp, "wb") as f:
    np.savez(f, **arrays)


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
  if lora_run and not data.adapter_name:
    raise config_lib.ConfigError("an adapter run needs duv.adapter_name (its file in the bundle)")
  if lora_run:  # the base first: without it, nothing else matters
    _check_same_model(model.model_config(), data.bundle)
    scaler = duv_manifest.load_scaler(os.path.join(data.bundle, bundle.SCALER_FILE))
    if scaler.features != data.features:
      raise config_lib.ConfigError(f"duv.features {data.features} differ from the base's "
                                   f"{scaler.features} in {data.bundle}")
    mapping["training"]["base_params"] = os.path.join(data.bundle, bundle.PARAMS_FILE)
  rows = splits.select(duv_manifest.read_manifest(data.manifest, data.features),
                       data.instrument, data.pieces)
  parts = splits.split(rows, data.heldout, data.valid_tail)
  if not lora_run:
    scaler = duv_manifest.fit_scaler([{**r, "split": "train"} for r in parts.train],
                                     data.features)
  columns = len(duv_manifest.feature_columns(scaler.features))
  if columns != model.n_features:
    raise ValueError(f"the scaler's {columns} feature columns differ from model.n_features "
                     f"{model.n_features}")
  paths = {s: os.path.join(workdir, f"duv_{s}.npz") for s in ("train", "valid")}
  mapping["data"].update(path=paths["train"], val_path=paths["valid"])
  mapping["training"]["steps"] = 1  # a stand-in: the whole config is checked before any write
  batch_size = config_lib.from_config_dict(mapping).data.batch_size
  windows = {name: _windows(part, model.seq_len, data.stride, scaler)
             for name, part in (("train", parts.train), ("valid", parts.valid))}
  n_windows = {name: len(arrays["mask"]) for name, arrays in windows.items()}
  steps_per_epoch = n_windows["train"] // batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"{n_windows['train']} train windows do not fill one batch of {batch_size}")
  mapping["training"]["steps"] = data.epochs * steps_per_epoch
  config = config_lib.from_config_dict(mapping)
  os.makedirs(workdir, exist_ok=True)
  for name, arrays in windows.items():
    _write_windows(paths[name], arrays)
  n_train_notes = sum(len(r["notes"]["onset_beats"]) for r in parts.train)
  return Prepared(config, data, scaler, parts, n_train_notes, n_windows)


def finish(prepared: Prepared, result: loop.Result, workdir: str) -> str:
  """Write the loop's export as the bundle (base) or as the adapter beside its base, and the split
  record into `workdir`; returns what was written."""
  if result.status == "stopped":
    raise exit_status.Stopped(f"training stopped at step {result.step} before it finished; run "
                              "it again with the same workdir to resume")
  data, config = prepared.data, prepared.config
  if not loop.is_primary():  # process 0 of a multi-process run writes the results
    return (data.bundle if config.training.type == "full" else
            os.path.join(data.bundle, data.adapter_name + bundle.ADAPTER_SUFFIX))
  if config.training.type == "full":
    path = data.bundle
    params = flax_weights.load_params(result.export_path, result.params)
    bundle.save_bundle(path, params, config.model.model_config(), prepared.scaler,
                       prepared.n_train_notes)
  else:
    path = os.path.join(data.bundle, data.adapter_name + bundle.ADAPTER_SUFFIX)
    with atomic.atomic_path(path) as tmp:
      shutil.copyfile(result.export_path, tmp)
  bundle.load_model(path)  # the checks inference runs: right base, every module where it says
  splits.write_record(os.path.join(workdir, splits.RECORD_FILE), splits.record(
      config.training.type, path, result.export_step, data.bundle, data.manifest,
      data.instrument, data.pieces, data.heldout, data.valid_tail, prepared.parts))
  return path


def train(config_dict: Mapping[str, Any], workdir: str, training_type: str,
          devices: Sequence[jax.Device] | None = None) -> str:
  """Prepare, train with the shared loop (on `devices`, default all), finish.

  `training_type` ('full' or 'lora') must be the config's: each program trains one kind.
  """
  given = config_dict["training"]["type"] if "training" in config_dict else None
  if given != training_type:  # before `prepare` writes anything
    raise ValueError(f"this program trains training.type {training_type!r}; the config says "
                     f"{given!r}")
  relora_every = config_dict["training"]["relora_every"]
  if relora_every:
    # ReLoRA's result is a whole model (lora_jax.train.relora), not the adapter file this
    # program writes into the bundle.
    raise ValueError(f"training.relora_every {relora_every}: a DUV adapter run writes an "
                     f"adapter, and ReLoRA's result is a whole model; set it to 0")
  prepared = prepare(config_dict, workdir)
  result = loop.train(prepared.config, os.path.join(workdir, "run"), devices=devices)
  return finish(prepared, result, workdir)
