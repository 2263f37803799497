r"""python bench/rhythm_costs.py --pack=style_packs/celtic_fiddle --split=validation \
    --models=old/base_model.safetensors,assets/base_model/base_model.safetensors:runs/x/adapter.lora

Where a model's bits go on a pack's windows: bits per target token of each kind (as
`evaluation.nll_by_kind` scores them) and the rhythm's bookkeeping apart. After a note's
Duration the next token is a Position or a Bar; in a monophonic tune (the fiddle tunes, 99.9%;
Essen songs, 98%) the next onset is the last note's onset plus its duration, and a Bar comes when
that fills the bar: both are deterministic given the tokens so far, so their cost says how well a
model does that addition. One row per model, `base` or `base:adapter` (the adapter at weight 1).
"""

import collections
import math

from absl import app, flags
import numpy as np

from lora_jax import lora
from lora_jax.hierarchy import base_file, evaluation, windows

_PACK = flags.DEFINE_string("pack", None, "Style pack folder.")
_SPLIT = flags.DEFINE_string("split", "validation", "Pack split to score.")
_MODELS = flags.DEFINE_list("models", None, "base[:adapter] model files, one row each.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 256, "Tokens per window (BOS included).")
_CACHE = flags.DEFINE_string("cache_dir", "", "Token-window cache; default: <pack>/.windows.")
flags.mark_flags_as_required(["pack", "models"])


def rhythm_contexts(tokens_T: np.ndarray, names: list[str]) -> dict[int, str]:
  """Target index (into tokens[1:]) -> context, for each Position or Bar right after a note."""
  out, onset, duration = {}, None, None
  for i in range(1, len(tokens_T)):
    name, prev = names[tokens_T[i]], names[tokens_T[i - 1]]
    if prev.startswith("Duration_") and onset is not None:
      if name == "Bar":
        out[i - 1] = "Bar after a note"
      elif name.startswith("Position_"):
        rule = int(name.split("_")[1]) == onset + duration
        out[i - 1] = "Position = onset + duration" if rule else "other Position after a note"
    if name.startswith("Position_"):
      onset = int(name.split("_")[1])
    elif name.startswith("Duration_"):
      duration = int(name.split("_")[1])
    elif name == "Bar":
      onset = None
  return out


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  for spec in _MODELS.value:
    base_path, _, adapter_path = spec.partition(":")
    base = base_file.load_model(base_path)
    tokenizer = base_file.load_tokenizer(base.path, base.settings)
    arrays = windows.load_arrays(windows.split_windows([_PACK.value], _SPLIT.value, tokenizer,
                                                       _SEQ_LEN.value, _CACHE.value))
    adapters = [lora.load_adapter(adapter_path).adapter] if adapter_path else []
    weights = [1.0] * len(adapters)
    kinds = evaluation.nll_by_kind(base.model(), base.params, arrays, tokenizer, adapters,
                                   weights)
    ce, mask = evaluation.target_ce(base.model(), base.params, arrays, adapters, weights,
                                    base_file.pooled_targets(tokenizer))
    rhythm = collections.defaultdict(list)
    for row, tokens_T in enumerate(np.asarray(arrays["tokens"])):
      for t, context in rhythm_contexts(tokens_T, tokenizer.tokens).items():
        if mask[row, t] > 0:
          rhythm[context].append(ce[row, t])
    n = sum(k.n_tokens for k in kinds.values())
    total = sum(k.bits_per_token * k.n_tokens for k in kinds.values()) / n
    print(f"{base.fingerprint}{' + ' + adapter_path if adapter_path else ''}: {total:.4f} bits "
          f"per token over {n} targets")
    print("  by kind (bits per token of the kind; its share of the total):")
    for kind, v in sorted(kinds.items(), key=lambda kv: -kv[1].bits_per_token * kv[1].n_tokens):
      print(f"    {kind:14s} {v.bits_per_token:7.3f} x {v.n_tokens:6d}  "
            f"({v.bits_per_token * v.n_tokens / n:.3f})")
    print("  after a note's Duration:")
    for context, values in sorted(rhythm.items()):
      print(f"    {context:28s} {np.mean(values) / math.log(2.0):7.3f} x {len(values):6d}")


if __name__ == "__main__":
  app.run(main)
