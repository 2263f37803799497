"""`launch/train_autoencoder.py`'s work: a folder of WAV files to a trained Oobleck autoencoder
in the files `encode_latents` and `decode_latents` read.

Order: the config and every WAV file are read and checked before anything is written; then the
segments `.npz` is written into the workdir and the shared loop trains the `autoencoder` family
there (running it again resumes from the last checkpoint). When the run finishes, the exported
`params.safetensors` becomes `autoencoder.safetensors` (the original's state dict, which
stable-audio-tools loads strictly) and `model_config.json` (the original's autoencoder config).
"""

import json
import os
from typing import Any

from absl import logging

from lora_jax import atomic
from lora_jax.data.dit import pre_encoded, segments
from lora_jax.families import autoencoder as ae_family
from lora_jax.interop import flax_weights, oobleck_convert
from lora_jax.models.oobleck import model as oobleck
from lora_jax.train import config as config_lib
from lora_jax.train import loop

SEGMENTS = "segments.npz"
WEIGHTS = "autoencoder.safetensors"
MODEL_CONFIG = "model_config.json"


def run(config_dict: Any, audio_dir: str, workdir: str) -> loop.Result:
  """Train on `audio_dir`'s WAV files (or the config's synthetic tones when it is '')."""
  if audio_dir:
    config_dict.data.path = os.path.join(workdir, SEGMENTS)
    config_dict.data.synthetic_examples = 0
  config = config_lib.from_config_dict(config_dict)
  if config.family != ae_family.NAME:
    raise config_lib.ConfigError(f"config.family {config.family!r}: train_autoencoder trains "
                                 f"the {ae_family.NAME!r} family")
  if config.training.type != "full":
    raise config_lib.ConfigError(f"training.type {config.training.type!r}: an autoencoder "
                                 "trains whole ('full')")
  model: ae_family.AutoencoderTrainConfig = config.model
  arrays = None
  if audio_dir:
    arrays, n_files = segments.from_folder(audio_dir, model.sample_rate, model.io_channels,
                                           model.segment_samples)
    logging.info("%d segments of %d samples from %d files in %s", len(arrays["audio"]),
                 model.segment_samples, n_files, audio_dir)
  os.makedirs(workdir, exist_ok=True)
  if arrays is not None:
    pre_encoded.write_npz(arrays, config.data.path)
  result = loop.train(config, workdir)
  if result.export_path:
    ae = model.autoencoder()
    params = flax_weights.load_params(result.export_path, oobleck.abstract_params(ae))
    oobleck_convert.save(params, os.path.join(workdir, WEIGHTS))
    atomic.write_text(os.path.join(workdir, MODEL_CONFIG),
                      json.dumps(model.original_json(), indent=1) + "\n")
    logging.info("wrote %s and %s (step %s)", WEIGHTS, MODEL_CONFIG, result.export_step)
  return result
