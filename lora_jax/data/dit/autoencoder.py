"""The autoencoder a pre-encoding run uses: its JSON model config and its weight file."""

import functools
import hashlib
import json

import jax

from lora_jax import errors
from lora_jax.interop import oobleck_convert
from lora_jax.models.oobleck import config as oobleck_config
from lora_jax.models.oobleck import model as oobleck


def read_model_config(path: str) -> tuple[dict, oobleck_config.AutoencoderConfig]:
  """(the JSON object, the autoencoder's config) of an original model config file."""
  try:
    with open(path) as f:
      raw = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise errors.UserError(f"model config {path}: {e}") from None
  if not isinstance(raw, dict):
    raise errors.UserError(f"model config {path} is not a JSON object")
  try:
    return raw, oobleck_config.config_from_original(raw)
  except ValueError as e:
    raise errors.UserError(f"model config {path}: {e}") from None


def load(model_config: str, weights: str, prefix: str | None
         ) -> tuple[dict, oobleck_config.AutoencoderConfig, dict]:
  """(model config JSON, autoencoder config, parameters)."""
  raw, config = read_model_config(model_config)
  return raw, config, oobleck_convert.load(weights, config, prefix)


def file_digest(path: str) -> str:
  """sha256 of a file, read in blocks (weight files are gigabytes)."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 24), b""):
      h.update(block)
  return h.hexdigest()


@functools.lru_cache(maxsize=4)
def encoder(config: oobleck_config.AutoencoderConfig, sample: bool):
  """jit(params, audio [B, C, T], key) -> latents: the VAE's draw when `sample`, else its mean."""
  if sample:
    return jax.jit(lambda p, x, key: oobleck.to_latents(p, config, x, key))
  return jax.jit(lambda p, x, key: oobleck.to_latents(p, config, x))


@functools.lru_cache(maxsize=4)
def decoder(config: oobleck_config.AutoencoderConfig):
  """jit(params, latents [B, L, N]) -> audio [B, C, N * downsampling_ratio]."""
  return jax.jit(lambda p, z: oobleck.from_latents(p, config, z))
