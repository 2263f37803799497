"""The music transformer's size for a weight file: from the file itself when it records it.

Files that record their size: the Flax base files of `launch/convert_torch.py` (metadata
`model_config`, a `TransformerConfig` as JSON), the hierarchy's model files such as the shipped
`assets/base_model` (`model`, its `ModelSettings`), and the `.safetensors` that
`launch/export_torch.py` writes (`model_config` again). For those a config is not needed; one that
is given must agree with the file. Plain `.pt` files record nothing, so they need the config.
"""

import dataclasses
import json
from typing import Mapping

from lora_jax.models.transformer import TransformerConfig
from lora_jax.train import config as config_lib

METADATA_KEY = "model_config"
HIERARCHY_FORMAT = "lora_jax.hierarchy.model/1"  # `lora_jax.hierarchy.base_file`: key `model`
_SIZE_FIELDS = ("vocab_size", "d_model", "n_heads", "n_layers", "d_ff", "max_len", "positions")


class ModelSizeError(ValueError):
  """No model size for a file, or a config that disagrees with the size the file records."""


def recorded(metadata: Mapping[str, str], source: str) -> TransformerConfig | None:
  """The size a file's metadata records, or None when it records none."""
  if METADATA_KEY in metadata:
    text, where = metadata[METADATA_KEY], f"{source} metadata {METADATA_KEY}"
  elif metadata.get("format") == HIERARCHY_FORMAT and "model" in metadata:
    text, where = metadata["model"], f"{source} metadata model"
  else:
    return None
  fields = json.loads(text)
  given = {} if "dtype" in fields else {"dtype": "float32"}  # the hierarchy records no dtype
  if "positions" not in fields:  # files from before rotary positions: a learned table
    given["positions"] = "learned"
  return config_lib.from_mapping(TransformerConfig, fields, where, **given)


def metadata_of(config: TransformerConfig) -> dict[str, str]:
  """Metadata that records `config` in a safetensors file."""
  return {METADATA_KEY: json.dumps(dataclasses.asdict(config), sort_keys=True)}


def resolve(metadata: Mapping[str, str], config_model, source: str) -> TransformerConfig:
  """The file's recorded size, else `config_model` (a `config.model` group, or None)."""
  from_file = recorded(metadata, source)
  from_config = None
  if config_model is not None:
    from_config = config_lib.from_mapping(TransformerConfig, config_model, "config.model")
  if from_file is None and from_config is None:
    raise ModelSizeError(f"{source} does not record the model's size; pass --config (e.g. "
                         "configs/music_transformer.py) with its --config.model.* fields")
  if from_file is None:
    return from_config
  if from_config is not None:
    differ = [f for f in _SIZE_FIELDS if getattr(from_file, f) != getattr(from_config, f)]
    if differ:
      f = differ[0]
      raise ModelSizeError(f"{source} records {f}={getattr(from_file, f)} but the config says "
                           f"{f}={getattr(from_config, f)}; drop --config to use the file's size")
  return from_file
