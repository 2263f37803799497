r"""Fold a parent (and a child) adapter into the base: one model file for inference.

python launch/merge_adapters.py --base-model=assets/base_model/base_model.safetensors \
    --parent-adapter=checkpoints/adapters/celtic_fiddle/celtic_fiddle.lora \
    --child-adapter=checkpoints/adapters/celtic_fiddle/reel/reel.lora \
    --output=merged_models/reel_model.safetensors --blend-mode=additive --parent-weight=1.0 \
    --child-weight=1.0 --create-config --torch-output=merged_models/reel_model.pt
python launch/merge_adapters.py --test-compatibility --base-model=... --parent-adapter=... \
    --child-adapter=...

Blend modes: additive W + a*dP + b*dC; interpolative W + (a*dP + b*dC)/(a + b). The merged model
is Flax safetensors with vocab.json beside it; --create-config writes <output stem>.json.
--test-compatibility runs the checks only and prints a report (exit 1 on the first failure).
"""

import os

from absl import flags
from absl import logging

from lora_jax import cli, lora
from lora_jax.hierarchy import merging

_BASE = flags.DEFINE_string("base_model", "checkpoints/base_model/base_model.safetensors",
                            "Base model file.")
_PARENT = flags.DEFINE_string("parent_adapter", None, "The parent's .lora.")
_CHILD = flags.DEFINE_string("child_adapter", None, "A child's .lora (needs its parent).")
_MODE = flags.DEFINE_enum("blend_mode", "additive", list(lora.BLEND_MODES), "How weights combine.")
_PARENT_WEIGHT = flags.DEFINE_float("parent_weight", 1.0, "Weight of the parent's delta.")
_CHILD_WEIGHT = flags.DEFINE_float("child_weight", 1.0, "Weight of the child's delta.")
_OUTPUT = flags.DEFINE_string("output", None, "Merged model file (.safetensors).")
_TORCH = flags.DEFINE_string("torch_output", "", "Also export for PyTorch (.pt or .safetensors).")
_CREATE_CONFIG = flags.DEFINE_bool("create_config", False,
                                   "Write the inference config <output stem>.json.")
_TEST = flags.DEFINE_bool("test_compatibility", False, "Only run the checks and print a report.")


def main(args):
  if len(args) > 1:
    raise ValueError(f"unexpected arguments: {args[1:]}")
  if _TEST.value:
    base, adapters = merging.load_stack(_BASE.value, _PARENT.value, _CHILD.value)
    print("\n".join(merging.check(base, adapters) + ["compatible"]))
    return
  if not _OUTPUT.value:
    raise ValueError("--output is required to merge (or pass --test-compatibility)")
  merged = merging.merge(_BASE.value, _PARENT.value, _CHILD.value, blend_mode=_MODE.value,
                         parent_weight=_PARENT_WEIGHT.value, child_weight=_CHILD_WEIGHT.value,
                         output=_OUTPUT.value, create_config=_CREATE_CONFIG.value,
                         torch_output=_TORCH.value)
  for line in merged.report:
    logging.info("%s", line)
  logging.info("wrote %s (fingerprint %s, effective weights %s)%s%s", merged.path,
               merged.fingerprint, merged.weights,
               f"; config {merged.config_path}" if merged.config_path else "",
               f"; PyTorch {merged.torch_path}" if merged.torch_path else "")


if __name__ == "__main__":
  cli.run(main, "merge_adapters")
