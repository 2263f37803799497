r"""Held-out NLL (bits per token) of base, base + parent, base + parent + child and a merged model.

python launch/evaluate_nll.py --base-model=assets/base_model/base_model.safetensors \
    --parent-adapter=checkpoints/adapters/celtic_fiddle/celtic_fiddle.lora \
    --child-adapter=checkpoints/adapters/celtic_fiddle/jig/jig.lora \
    --merged=merged_models/jig_model.safetensors \
    --packs=style_packs/celtic_fiddle/jig,style_packs/celtic_fiddle/reel,style_packs/essen_folk

One column per pack (its `--split`, test by default), windows of --seq-len tokens as in training.
"""

import os

from absl import flags

from lora_jax import cli
from lora_jax.data import style_pack
from lora_jax.hierarchy import evaluation

_BASE = flags.DEFINE_string("base_model", "checkpoints/base_model/base_model.safetensors",
                            "Base model file.")
_PARENT = flags.DEFINE_string("parent_adapter", None, "The parent's .lora.")
_CHILD = flags.DEFINE_string("child_adapter", None, "A child's .lora (over that parent).")
_MERGED = flags.DEFINE_string("merged", None, "A merged model of base + parent (+ child) at 1.")
_PACKS = flags.DEFINE_list("packs", None, "Style pack folders, one column each.")
_SPLIT = flags.DEFINE_enum("split", "test", list(style_pack.SPLITS), "Pack split to score.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 256, "Tokens per window (BOS included).")
_CACHE = flags.DEFINE_string("cache_dir", ".cache/hierarchy_windows", "Token-window cache.")
flags.mark_flags_as_required(["parent_adapter", "packs"])


def main(args):
  if len(args) > 1:
    raise ValueError(f"unexpected arguments: {args[1:]}")
  table = evaluation.level_table(_BASE.value, _PARENT.value, _CHILD.value, _MERGED.value,
                                 _PACKS.value, _SPLIT.value, _SEQ_LEN.value, _CACHE.value)
  print(table.format())


if __name__ == "__main__":
  cli.run(main, "evaluate_nll")
