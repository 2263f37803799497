"""An adapter between lora_jax's .lora and LoRAW's checkpoint or ComfyUI's LoRA naming.

python launch/convert_adapter.py --to=loraw --input=pop.lora --output=pop.ckpt
python launch/convert_adapter.py --to=loraw --input=pop.lora --output=pop.ckpt \
  --prefix=model/model/     # the module paths of Stable Audio's DiT, as LoRAW writes them
python launch/convert_adapter.py --to=comfyui --input=pop.lora --output=pop_comfyui.safetensors
python launch/convert_adapter.py --to=lora --input=pop.ckpt --output=pop.lora \
  --input_base=assets/base_model/base_model.safetensors --alpha=16 --multiplier=1
python launch/convert_adapter.py --to=merged --input=biased_dora.ckpt --output=merged.safetensors \
  --input_base=assets/base_model/base_model.safetensors --alpha=16   # any LoRAW file, exactly
python launch/convert_adapter.py --to=lora --from=comfyui --input=pop_comfyui.safetensors \
  --output=pop.lora --input_base=assets/base_model/base_model.safetensors
A DoRA adapter needs --input_base both ways (LoRAW's DoRA is only exact on layers without bias;
ComfyUI's dora_scale is relative to the base weight's norm);
--config is needed only for a base file that does not record its size.
"""

from absl import flags, logging
from ml_collections import config_flags

from lora_jax import cli
from lora_jax.interop import export

_CONFIG = config_flags.DEFINE_config_file("config", None, "model config; only for a base file "
                                          "that does not record its size")
_TO = flags.DEFINE_enum("to", None, list(export.ADAPTER_FORMATS), "format to write")
_INPUT = flags.DEFINE_string("input", None, "adapter to read: a .lora, or a LoRAW checkpoint")
_OUTPUT = flags.DEFINE_string("output", None, "adapter file to write")
_BASE = flags.DEFINE_string("input_base", None, "Flax base file the adapter is for: checks it, "
                            "and is needed to read a LoRAW file")
_PREFIX = flags.DEFINE_string("prefix", "", "key prefix before the module path (LoRAW's "
                              "'model/model/' for Stable Audio)")
_ALPHA = flags.DEFINE_float("alpha", None, "LoRAW's config alpha (reading a LoRAW file)")
_RANK = flags.DEFINE_integer("rank", None, "LoRAW's config rank (default: the file's)")
_FROM = flags.DEFINE_enum("from", "loraw", list(export.SOURCE_FORMATS),
                          "format of --input with --to=lora")
_MULTIPLIER = flags.DEFINE_float("multiplier", 1.0, "LoRAW's multiplier (reading a LoRAW file)")
flags.mark_flags_as_required(["to", "input", "output"])


def main(argv):
  del argv
  config_model = _CONFIG.value.model if _CONFIG.value is not None else None
  note = export.convert_adapter(_INPUT.value, _OUTPUT.value, _TO.value, base_path=_BASE.value,
                                config_model=config_model, prefix=_PREFIX.value,
                                alpha=_ALPHA.value, rank=_RANK.value,
                                multiplier=_MULTIPLIER.value, source=_FROM.value)
  logging.info("wrote %s: %s", _OUTPUT.value, note)


if __name__ == "__main__":
  cli.run(main, "convert_adapter")
