"""Latents back to audio: `.npy` latent clips ([L, N], as pre-encoding writes them or a sampler
produces them) to 32-bit float WAV files at the model's sample rate.

A clip with its `.json` beside it is cut to its real frames (`padding_mask`) before writing, so a
decoded clip is as long as the audio it came from, rounded up to whole latent frames.
"""

import dataclasses
import json
import logging
import os

import numpy as np

from lora_jax import errors
from lora_jax.data.dit import autoencoder, wav


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
  model_config: str
  weights: str
  latents: str  # one .npy file or a folder of them
  out_dir: str
  prefix: str | None = None


def _latent_files(path: str) -> tuple[str, list[str]]:
  if os.path.isfile(path):
    return os.path.dirname(path), [path]
  if not os.path.isdir(path):
    raise errors.UserError(f"latents {path}: no such file or folder")
  found = sorted(os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs if f.endswith(".npy"))
  if not found:
    raise errors.UserError(f"latents folder {path} holds no .npy files")
  return path, found


def _read(npy: str, latent_dim: int) -> np.ndarray:
  try:
    z = np.load(npy, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise errors.UserError(f"{npy}: not a readable .npy array ({e})") from None
  if z.ndim != 2 or z.shape[0] != latent_dim or not np.issubdtype(z.dtype, np.floating):
    raise errors.UserError(f"{npy}: latents are {z.dtype}{list(z.shape)}; the autoencoder "
                           f"decodes float [{latent_dim}, frames]")
  if not np.all(np.isfinite(z)):
    raise errors.UserError(f"{npy}: latents hold NaN or infinity")
  meta_path = npy[:-len(".npy")] + ".json"
  if os.path.isfile(meta_path):
    try:
      with open(meta_path) as f:
        mask = json.load(f)["padding_mask"]
      frames = int(np.flatnonzero(np.asarray(mask))[-1]) + 1
    except (OSError, json.JSONDecodeError, KeyError, TypeError, IndexError, ValueError) as e:
      raise errors.UserError(f"{meta_path}: no usable padding_mask ({e!r})") from None
    z = z[:, :frames]
  return z.astype(np.float32)


def decode_latents(settings: DecodeSettings) -> int:
  """Writes one WAV per latent file under `out_dir` (same relative path); returns how many."""
  _, config, params = autoencoder.load(settings.model_config, settings.weights, settings.prefix)
  base, files = _latent_files(settings.latents)
  latents = {npy: _read(npy, config.latent_dim) for npy in files}  # all checked first
  decode = autoencoder.decoder(config)
  for npy, z in latents.items():
    out = os.path.join(settings.out_dir, os.path.relpath(npy, base)[:-len(".npy")] + ".wav")
    wav.write(out, np.asarray(decode(params, z[None]))[0], config.sample_rate)
    logging.info("decoded %s", out)
  return len(files)
