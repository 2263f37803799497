"""PyTorch base weights (.pt/.pth/.ckpt/.safetensors) to a Flax-native safetensors base file.

python launch/convert_torch.py --config=configs/music_transformer.py \
  --input=base.pt --output=base.safetensors
"""

import dataclasses
import json
import os

from absl import flags, logging
from ml_collections import config_flags

from lora_jax import cli
from lora_jax.interop import flax_weights, torch_convert
from lora_jax.models import transformer
from lora_jax.train import config as config_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "model config, e.g. "
                                          "configs/music_transformer.py:tiny")
_INPUT = flags.DEFINE_string("input", None, "PyTorch weight file to read")
_OUTPUT = flags.DEFINE_string("output", None, "Flax-native .safetensors file to write")
_PREFIX = flags.DEFINE_string("prefix", None, "key prefix to strip, e.g. 'model.' in a Lightning "
                              ".ckpt; detected when unset")
flags.mark_flags_as_required(["config", "input", "output"])


def main(argv):
  del argv
  model_config = config_lib.from_mapping(transformer.TransformerConfig, _CONFIG.value.model,
                                         "config.model")
  abstract = transformer.abstract_params(model_config)
  params = torch_convert.load_torch_params(_INPUT.value, abstract, prefix=_PREFIX.value)
  metadata = {"source": os.path.basename(_INPUT.value),
              "model_config": json.dumps(dataclasses.asdict(model_config))}
  flax_weights.save_params(params, _OUTPUT.value, metadata)
  logging.info("wrote %s from %s", _OUTPUT.value, _INPUT.value)


if __name__ == "__main__":
  cli.run(main, "convert_torch")
