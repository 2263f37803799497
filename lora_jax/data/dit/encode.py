"""A folder of WAV files to a pre-encoded latent data set, the format stable-audio-tools'
`pre_encoded` datasets read (and `lora_jax.data.dit.pre_encoded`):

  <out>/<path of the WAV under the audio folder, without .wav>.<clip:03d>.npy  latents [L, N]
  <out>/<same>.<clip:03d>.json  {"seconds_start", "seconds_total", "padding_mask", "prompt",
                                 "path", "sample_rate", "encoded_with"}

Latents are what the diffusion model sees: the autoencoder's VAE mean (or, with `sample`, its
draw from a key folded from the seed and the clip's number), divided by the pretransform's scale.
The prompt of `x.wav` is the text of `x.txt` beside it, else the `prompt` setting; a file with
neither is an error. Every input is checked (each WAV read, each prompt found, the weights
loaded) before anything is written; each clip's two files appear together or not at all. A clip
whose files exist with the same `encoded_with` (the weight file's sha256 and every setting that
shapes the latents) is kept, so a run stopped part-way continues where it stopped.
"""

import dataclasses
import json
import logging
import os

import jax
import numpy as np

from lora_jax import atomic, errors
from lora_jax.data.dit import autoencoder, clips, wav


@dataclasses.dataclass(frozen=True)
class EncodeSettings:
  model_config: str  # the original's model config JSON (diffusion_cond or autoencoder)
  weights: str  # .ckpt / .safetensors / .pt holding the autoencoder
  audio_dir: str
  out_dir: str
  prefix: str | None = None  # key prefix of the autoencoder in the weight file; None: detected
  sample_size: int | None = -1  # samples per clip; -1: the model config's; None: whole files
  prompt: str | None = None  # for WAVs without a .txt beside them
  sample: bool = False  # draw from the VAE instead of taking its mean
  seed: int = 0


def _prompt(wav_path: str, default: str | None) -> str:
  sidecar = os.path.splitext(wav_path)[0] + ".txt"
  if os.path.isfile(sidecar):
    try:
      with open(sidecar, encoding="utf-8") as f:
        return f.read().strip()
    except (OSError, UnicodeDecodeError) as e:
      raise errors.UserError(f"prompt file {sidecar}: {e}") from None
  if default is None:
    raise errors.UserError(f"{wav_path} has no prompt: no {os.path.basename(sidecar)} beside it "
                           "and no --prompt")
  return default


def _sample_size(settings: EncodeSettings, model_json: dict, ratio: int) -> int | None:
  size = settings.sample_size
  if size == -1:
    if "sample_size" not in model_json:
      raise errors.UserError(f"model config {settings.model_config} has no sample_size; give "
                             "--sample-size (0: whole files)")
    size = model_json["sample_size"]
  if size is not None and (not isinstance(size, int) or size < 1 or size % ratio):
    raise errors.UserError(f"sample_size {size!r} must be a positive multiple of the "
                           f"autoencoder's downsampling ratio {ratio}")
  return size


def _write_clip(npy: str, latents_LxN: np.ndarray, meta: dict) -> None:
  with atomic.atomic_paths(npy, npy[:-len(".npy")] + ".json") as (tmp_npy, tmp_json):
    with open(tmp_npy, "wb") as f:
      np.save(f, latents_LxN.astype(np.float32))
    with open(tmp_json, "w") as f:
      json.dump(meta, f)


def _is_done(npy: str, stamp: str) -> bool:
  meta = npy[:-len(".npy")] + ".json"
  if not (os.path.isfile(npy) and os.path.isfile(meta)):
    return False
  try:
    with open(meta) as f:
      return json.load(f).get("encoded_with") == stamp
  except (OSError, json.JSONDecodeError, AttributeError):
    return False


def encode_folder(settings: EncodeSettings) -> dict[str, int]:
  """Encodes every WAV under `audio_dir` into `out_dir`; returns counts of files and clips."""
  model_json, config = autoencoder.read_model_config(settings.model_config)
  size = _sample_size(settings, model_json, config.downsampling_ratio)
  if config.encoder.in_channels not in (1, 2):
    raise errors.UserError(f"the autoencoder takes {config.encoder.in_channels} audio channels; "
                           "WAV folders are encoded for mono or stereo models only")
  paths = wav.find(settings.audio_dir)
  stems: dict[str, str] = {}
  prompts = {}
  for path in paths:  # every input checked before the first write
    rel = os.path.relpath(path, settings.audio_dir)
    stem = os.path.splitext(rel)[0]
    if stem in stems:
      raise errors.UserError(f"{stems[stem]} and {rel} would write the same clips ({stem}.*)")
    stems[stem] = rel
    wav.read(path)  # resampling and channel mixing cannot fail once it reads
    prompts[path] = _prompt(path, settings.prompt)
  params = autoencoder.load(settings.model_config, settings.weights, settings.prefix)[2]
  stamp = json.dumps({"weights_sha256": autoencoder.file_digest(settings.weights),
                      "prefix": settings.prefix, "config": repr(config), "sample_size": size,
                      "sample": settings.sample,
                      "seed": settings.seed if settings.sample else None}, sort_keys=True)
  encode = autoencoder.encoder(config, settings.sample)
  root = jax.random.key(settings.seed)
  counts = {"files": len(paths), "clips": 0, "kept": 0}
  for path in paths:
    rel = os.path.relpath(path, settings.audio_dir)
    audio = wav.load(path, config.sample_rate, config.encoder.in_channels)
    for clip in clips.cut(audio, config.sample_rate, config.downsampling_ratio, size):
      npy = os.path.join(settings.out_dir, f"{os.path.splitext(rel)[0]}.{clip.index:03d}.npy")
      counts["clips"] += 1
      if _is_done(npy, stamp):
        counts["kept"] += 1
        continue
      key = jax.random.fold_in(root, counts["clips"] - 1) if settings.sample else None
      latents = np.asarray(encode(params, clip.audio[None], key))[0]
      _write_clip(npy, latents, {
          "seconds_start": clip.seconds_start, "seconds_total": clip.seconds_total,
          "padding_mask": list(clip.padding_mask), "prompt": prompts[path], "path": rel,
          "sample_rate": config.sample_rate, "encoded_with": stamp})
    logging.info("encoded %s", rel)
  return counts
