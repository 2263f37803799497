"""Quantise a Flax-native base file's dense kernels (QLoRA's NF4, or int8) into one safetensors file.

python launch/quantize_base.py --input=assets/base_model/base_model.safetensors \
  --quantize=nf4 --output=base_model.nf4.safetensors

The output holds the codes and scales under each kernel's path, the other leaves as --dtype, and
the source's metadata; `lora_jax.quant.load_base` reads it back against the model's shapes.
Training quantises its base itself (the config's `training.quantize`); this file is for export.
"""

from absl import flags, logging

from lora_jax import cli, quant

_INPUT = flags.DEFINE_string("input", None, "Flax-native .safetensors base file")
_OUTPUT = flags.DEFINE_string("output", None, "quantised .safetensors file to write")
_QUANTIZE = flags.DEFINE_enum("quantize", "nf4", list(quant.KINDS), "how kernels are stored")
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["float32", "bfloat16"],
                           "storage of the leaves that are not quantised")
flags.mark_flags_as_required(["input", "output"])


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  quant.quantize_file(_INPUT.value, _OUTPUT.value, _QUANTIZE.value, _DTYPE.value)
  logging.info("wrote %s (%s)", _OUTPUT.value, _QUANTIZE.value)


if __name__ == "__main__":
  cli.run(main, "quantize_base")
