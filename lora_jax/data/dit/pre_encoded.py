"""stable-audio-tools' `pre_encoded` data sets: folders of latent clips, read into the dit
family's arrays.

The format is the original's (what its pre-encoding script writes, so one data set serves both):
per clip `<name>.npy`, float latents [C, N], and beside it `<name>.json` holding `seconds_start`
and `seconds_total` (numbers), `padding_mask` (N zeros and ones, 1 on real frames) and `prompt`
(the text). Folders are searched recursively, clips taken in sorted path order.

The dataset config is the original's JSON, `{"dataset_type": "pre_encoded", "datasets": [{"id":
..., "path": ...}], "latent_crop_length": T}`. Each clip becomes one example of exactly T frames
(the model's `latent_length`): its first T frames, or zero-padded with padding_mask 0 beyond its
end. `random_crop` true, `custom_metadata_module` (a user's Python code run per clip) and other
dataset types (raw audio needs the Oobleck encoder first) are refused by name, as is any key this
reader does not know.
"""

import dataclasses
import json
import math
import os
from typing import Callable

import numpy as np

from lora_jax import atomic, errors
from lora_jax.data.song import text as text_tokens


class DatasetError(errors.UserError, ValueError):
  """A dataset config or a clip this reader refuses."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """A `pre_encoded` dataset config."""

  folders: tuple[tuple[str, str], ...]  # (id, path)
  latent_crop_length: int | None


_TOP = {"dataset_type", "datasets", "latent_crop_length", "random_crop", "latent_extension"}
_ENTRY = {"id", "path"}
_CLIP = {"seconds_start", "seconds_total", "padding_mask", "prompt"}


def read_dataset_config(path: str) -> DatasetSpec:
  """The dataset config JSON at `path`, checked strictly (relative paths: from its folder)."""
  try:
    with open(path) as f:
      cfg = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise DatasetError(f"dataset config {path}: {e}") from None
  if not isinstance(cfg, dict):
    raise DatasetError(f"dataset config {path} is not a JSON object")
  unknown = sorted(set(cfg) - _TOP)
  if unknown:
    raise DatasetError(f"dataset config {path}: unsupported key {unknown[0]!r} (known: "
                       f"{', '.join(sorted(_TOP))})")
  if cfg.get("dataset_type") != "pre_encoded":
    raise DatasetError(f"dataset config {path}: dataset_type {cfg.get('dataset_type')!r} is not "
                       "supported; encode the audio to latents first (dataset_type "
                       "'pre_encoded')")
  if cfg.get("random_crop", False) is not False:
    raise DatasetError(f"dataset config {path}: random_crop {cfg['random_crop']!r} is not "
                       "supported (clips are cut at their start)")
  if cfg.get("latent_extension", "npy") != "npy":
    raise DatasetError(f"dataset config {path}: latent_extension {cfg['latent_extension']!r} "
                       "is not supported (only 'npy')")
  crop = cfg.get("latent_crop_length")
  if crop is not None and (not isinstance(crop, int) or isinstance(crop, bool) or crop < 1):
    raise DatasetError(f"dataset config {path}: latent_crop_length must be an integer >= 1, "
                       f"got {crop!r}")
  entries = cfg.get("datasets")
  if not isinstance(entries, list) or not entries:
    raise DatasetError(f"dataset config {path}: 'datasets' must be a non-empty list of "
                       "{\"id\", \"path\"} objects")
  folders = []
  base = os.path.dirname(os.path.abspath(path))
  for i, entry in enumerate(entries):
    if not isinstance(entry, dict):
      raise DatasetError(f"dataset config {path}: datasets[{i}] is not an object")
    bad = sorted(set(entry) - _ENTRY)
    if bad:
      raise DatasetError(f"dataset config {path}: datasets[{i}] has unsupported key {bad[0]!r} "
                         f"(known: id, path)")
    if not isinstance(entry.get("id"), str) or not isinstance(entry.get("path"), str):
      raise DatasetError(f"dataset config {path}: datasets[{i}] needs string 'id' and 'path'")
    folder = os.path.join(base, entry["path"])
    if not os.path.isdir(folder):
      raise DatasetError(f"dataset config {path}: datasets[{i}] path {folder} is no folder")
    folders.append((entry["id"], folder))
  return DatasetSpec(tuple(folders), crop)


def _number(meta: dict, key: str, where: str) -> float:
  value = meta[key]
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    raise DatasetError(f"{where}: {key} must be a finite number, got {value!r}")
  return float(value)


def _clip(npy: str, channels: int, length: int, text_len: int | None) -> dict[str, np.ndarray]:
  meta_path = npy[:-len(".npy")] + ".json"
  try:
    latents = np.load(npy, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise DatasetError(f"{npy}: not a readable .npy array ({e})") from None
  if latents.ndim != 2 or latents.shape[0] != channels or not np.issubdtype(latents.dtype,
                                                                             np.floating):
    raise DatasetError(f"{npy}: latents are {latents.dtype}{list(latents.shape)}, the model "
                       f"needs float [{channels}, frames]")
  if not np.all(np.isfinite(latents)):
    raise DatasetError(f"{npy}: latents hold non-finite values")
  try:
    with open(meta_path) as f:
      meta = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise DatasetError(f"{meta_path} (metadata of {os.path.basename(npy)}): {e}") from None
  if not isinstance(meta, dict):
    raise DatasetError(f"{meta_path}: not a JSON object")
  missing = sorted(_CLIP - set(meta))
  if missing:
    raise DatasetError(f"{meta_path}: missing {', '.join(missing)}")
  mask = meta["padding_mask"]
  frames = latents.shape[1]
  if (not isinstance(mask, list) or len(mask) != frames
      or any(v not in (0, 1) or isinstance(v, bool) for v in mask)):
    raise DatasetError(f"{meta_path}: padding_mask must be {frames} zeros and ones (one per "
                       "latent frame)")
  if not isinstance(meta["prompt"], str):
    raise DatasetError(f"{meta_path}: prompt must be a string, got {meta['prompt']!r:.40}")
  prompt = meta["prompt"]  # the text, for a prompt encoder that takes all clips at once
  if text_len is not None:
    try:
      prompt = text_tokens.encode_text(prompt, text_len)
    except ValueError as e:
      raise DatasetError(f"{meta_path}: prompt {e} (model text_len)") from None
  out_latents = np.zeros((channels, length), np.float32)
  out_mask = np.zeros((length,), np.float32)
  n = min(frames, length)
  out_latents[:, :n] = latents[:, :n]
  out_mask[:n] = np.asarray(mask[:n], np.float32)
  if not out_mask.any():
    raise DatasetError(f"{meta_path}: no real frame in the first {length} (padding_mask)")
  return {"latents": out_latents, "padding_mask": out_mask, "prompt": prompt,
          "seconds_start": np.float32(_number(meta, "seconds_start", meta_path)),
          "seconds_total": np.float32(_number(meta, "seconds_total", meta_path))}


def load_arrays(spec: DatasetSpec, channels: int, length: int, text_len: int,
                prompts: Callable[[list[str]], dict[str, np.ndarray]] | None = None
                ) -> dict[str, np.ndarray]:
  """Every clip of the data set as the dit family's arrays. The prompt is byte token ids of
  `text_len`, or, with `prompts` (texts -> arrays, e.g. `lora_jax.data.t5.prompts.T5Prompts`),
  what that returns for the clips' texts."""
  if spec.latent_crop_length is not None and spec.latent_crop_length != length:
    raise DatasetError(f"latent_crop_length {spec.latent_crop_length} differs from the model's "
                       f"latent_length {length}")
  clips = []
  for _, folder in spec.folders:
    found = sorted(os.path.join(root, f) for root, _, files in os.walk(folder)
                   for f in files if f.endswith(".npy"))
    if not found:
      raise DatasetError(f"dataset folder {folder} holds no .npy latent clips")
    clips += [_clip(p, channels, length, None if prompts else text_len) for p in found]
  texts = [c.pop("prompt") for c in clips] if prompts else None
  arrays = {k: np.stack([c[k] for c in clips]) for k in clips[0]}
  if prompts:
    arrays.update(prompts(texts))
  return arrays


def write_npz(arrays: dict[str, np.ndarray], path: str) -> None:
  """The arrays as the .npz `data.path` reads, atomically."""
  with atomic.atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      np.savez(f, **arrays)
