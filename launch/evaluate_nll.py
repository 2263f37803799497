r"""Held-out NLL (bits per token) of base, base + parent, base + parent + child and a merged model.

python launch/evaluate_nll.py --base-model=assets/base_model/base_model.safetensors \
    --parent-adapter=checkpoints/adapters/celtic_fiddle/celtic_fiddle.lora \
    --child-adapter=checkpoints/adapters/celtic_fiddle/jig/jig.lora \
    --merged=merged_models/jig_model.safetensors \
    --packs=style_packs/celtic_fiddle/jig,style_packs/celtic_fiddle/reel,style_packs/essen_folk

One column per pack (its `--split`, test by default), in windows of the length the adapters were
trained on (recorded in the child's .lora, else the parent's, else the base's; `--seq_len` to
choose another). The token-window cache lives in each pack's `.windows/` unless --cache_dir.
"""

import os

from absl import flags

from lora_jax import cli
from lora_jax.data.style_packs import pack as style_pack
from lora_jax.hierarchy import evaluation

_BASE = flags.DEFINE_string("base_model", "checkpoints/base_model/base_model.safetensors",
                            "Base model file.")
_PARENT = flags.DEFINE_string("parent_adapter", None, "The parent's .lora.")
_CHILD = flags.DEFINE_string("child_adapter", None, "A child's .lora (over that parent).")
_MERGED = flags.DEFINE_string("merged", None, "A merged model of base + parent (+ child) at 1.")
_PACKS = flags.DEFINE_list("packs", None, "Style pack folders, one column each.")
_SPLIT = flags.DEFINE_enum("split", "test", list(style_pack.SPLITS), "Pack split to score.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", None, "Tokens per window (BOS included); default: "
                                "what the adapters were trained on.")
_CACHE = flags.DEFINE_string("cache_dir", "", "Token-window cache; default: <pack>/.windows.")
flags.mark_flags_as_required(["parent_adapter", "packs"])


def main(args):
  if len(args) > 1:
    raise ValueError(f"unexpected arguments: {args[1:]}")
  seq_len = _SEQ_LEN.value or evaluation.trained_seq_len(_BASE.value, _PARENT.value,
                                                         _CHILD.value)
  table = evaluation.level_table(_BASE.value, _PARENT.value, _CHILD.value, _MERGED.value,
                                 _PACKS.value, _SPLIT.value, seq_len, _CACHE.value)
  print(evaluation.heading(_SPLIT.value))
  print(table.format())


if __name__ == "__main__":
  cli.run(main, "evaluate_nll")
