"""Flax-native base file (with adapters folded in, if given) to PyTorch; or an adapter to PEFT.

The model's size comes from the base file when it records it (convert_torch's output, the shipped
assets/base_model); --config is needed only for a file that does not:
python launch/export_torch.py --input=assets/base_model/base_model.safetensors --output=base.pt
python launch/export_torch.py --config=configs/music_transformer.py \
  --input=base.safetensors --output=base_torch.pt
python launch/export_torch.py --input=base.safetensors \
  --adapters=pop.lora,dance_pop.lora --weights=1.0,0.5 --blend_mode=additive --output=merged.pt
python launch/export_torch.py --input=base.safetensors --adapters=pop.lora \
  --max_shard_size=2GB --output=merged_shards/   # sharded: folds on every device, see below
python launch/export_torch.py --peft_adapter=pop.lora --input=base.safetensors --output=pop_peft/

With --max_shard_size the merged model is a folder of safetensors shards and
model.safetensors.index.json, Hugging Face's layout; the base is read into an fsdp mesh over every
device and each device folds its own blocks, so no host holds the whole model.
"""

from absl import flags, logging
from ml_collections import config_flags

from lora_jax import cli
from lora_jax.interop import export, sharded_safetensors

_CONFIG = config_flags.DEFINE_config_file("config", None, "model config, e.g. "
                                          "configs/music_transformer.py:tiny; only for a base "
                                          "file that does not record its size")
_INPUT = flags.DEFINE_string("input", None, "Flax-native .safetensors base file to read")
_OUTPUT = flags.DEFINE_string("output", None, "file to write: .safetensors, .pt or .pth; a folder "
                              "with --peft_adapter")
_ADAPTERS = flags.DEFINE_list("adapters", [], ".lora files to fold into the base")
_WEIGHTS = flags.DEFINE_list("weights", [], "one weight per adapter (default 1 each)")
_BLEND = flags.DEFINE_enum("blend_mode", "additive", ["additive", "interpolative"],
                           "additive: base + sum w_i d_i; interpolative: weights normalised to 1")
_ALLOW_OTHER_BASE = flags.DEFINE_bool("allow_other_base", False, "merge adapters trained on "
                                      "another base (fingerprint mismatch)")
_PEFT_ADAPTER = flags.DEFINE_string("peft_adapter", None, "export this .lora adapter as a PEFT "
                                    "adapter folder instead of a merged model; with --input it "
                                    "is checked against that base first")
_BASE_NAME = flags.DEFINE_string("base_model_name", None, "the PEFT config's "
                                 "base_model_name_or_path (default: the --input file's name)")
_MAX_SHARD = flags.DEFINE_string("max_shard_size", "", "write the merged model as a folder of "
                                 "safetensors shards of at most this size (5GB, 500MB, 2GiB) "
                                 "with an index, merged on a mesh of every device")
_FAMILY = "music_lm"
flags.mark_flags_as_required(["output"])


def main(argv):
  del argv
  config_model = _CONFIG.value.model if _CONFIG.value is not None else None
  if _PEFT_ADAPTER.value:
    if _MAX_SHARD.value:
      raise ValueError("--max_shard_size shards a merged model; a PEFT adapter folder has one "
                       "small file (drop one of --max_shard_size and --peft_adapter)")
    export.export_adapter_peft(_PEFT_ADAPTER.value, _OUTPUT.value, base_path=_INPUT.value,
                               base_model_name=_BASE_NAME.value, config_model=config_model,
                               model_family=_FAMILY, allow_other_base=_ALLOW_OTHER_BASE.value)
  else:
    if _INPUT.value is None:
      raise ValueError("--input (the Flax base file) is required to export a base model")
    weights = [float(w) for w in _WEIGHTS.value] or [1.0] * len(_ADAPTERS.value)
    max_shard = sharded_safetensors.parse_size(_MAX_SHARD.value) if _MAX_SHARD.value else 0
    export.export_base(_INPUT.value, config_model, _ADAPTERS.value, weights, _OUTPUT.value,
                       model_family=_FAMILY, blend_mode=_BLEND.value,
                       allow_other_base=_ALLOW_OTHER_BASE.value, max_shard_bytes=max_shard)
  logging.info("wrote %s", _OUTPUT.value)


if __name__ == "__main__":
  cli.run(main, "export_torch")
