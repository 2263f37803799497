"""The config boundary of the music transformer: `config.model` to a frozen dataclass to shapes.

Launch scripts hand `config.model` (an ml_collections ConfigDict, read here as a plain mapping)
to `transformer_config_from`; nothing below this point sees a ConfigDict. Every dataclass field
must be present and no other field may be: a typo in a config is an error, not a default.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from lora_jax.models.transformer import MusicTransformer, TransformerConfig


def transformer_config_from(cfg_model: Any) -> TransformerConfig:
  """`config.model` (a ConfigDict or mapping with exactly the dataclass fields) as the dataclass."""
  fields = [f.name for f in dataclasses.fields(TransformerConfig)]
  given = {k: cfg_model[k] for k in cfg_model.keys()}
  missing = [f for f in fields if f not in given]
  unknown = [k for k in given if k not in fields]
  if missing or unknown:
    raise ValueError(f"config.model does not match TransformerConfig: missing {missing}, "
                     f"unknown {unknown}")
  return TransformerConfig(**given)


def abstract_params(config: TransformerConfig) -> Any:
  """Shapes and dtypes of the model's parameters (jax.ShapeDtypeStruct leaves), nothing computed."""
  model = MusicTransformer(config)
  tokens_BxT = jnp.zeros((1, config.max_len), jnp.int32)
  variables = jax.eval_shape(model.init, jax.random.key(0), tokens_BxT)
  return variables["params"]
