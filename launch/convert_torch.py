"""PyTorch base weights (.pt/.pth/.bin/.ckpt/.safetensors) to a Flax-native safetensors base file.

python launch/convert_torch.py --config=configs/music_transformer.py \
  --input=base.pt --output=base.safetensors
A .safetensors that records the model's size (export_torch.py writes it) needs no --config:
python launch/convert_torch.py --input=base_torch.safetensors --output=base.safetensors
"""

from absl import flags, logging
from ml_collections import config_flags

from lora_jax import cli
from lora_jax.interop import export

_CONFIG = config_flags.DEFINE_config_file("config", None, "model config, e.g. "
                                          "configs/music_transformer.py:tiny; only for a file "
                                          "that does not record its size")
_INPUT = flags.DEFINE_string("input", None, "PyTorch weight file to read")
_OUTPUT = flags.DEFINE_string("output", None, "Flax-native .safetensors file to write")
_PREFIX = flags.DEFINE_string("prefix", None, "key prefix to strip, e.g. 'model.' in a Lightning "
                              ".ckpt; detected when unset")
flags.mark_flags_as_required(["input", "output"])


def main(argv):
  del argv
  config_model = _CONFIG.value.model if _CONFIG.value is not None else None
  export.convert_base(_INPUT.value, _OUTPUT.value, config_model, prefix=_PREFIX.value)
  logging.info("wrote %s from %s", _OUTPUT.value, _INPUT.value)


if __name__ == "__main__":
  cli.run(main, "convert_torch")
