r"""python bench/base_nll.py --bases=old.safetensors,assets/base_model/base_model.safetensors \
    --packs=style_packs/essen_folk,style_packs/baroque_chorale --seq_len=256

Held-out NLL of base models alone (no adapters), one row per base and one column per pack's
split (test by default), scored as every table of the project scores it (`evaluation.nll`:
bits per target token, pitched Program targets pooled as one class), in windows of `--seq_len` tokens
(at most every base's max_len). A second block gives the bits of the Velocity targets alone:
what a note's loudness costs, the figure that shows whether a base has read a user's dynamics.
"""

from absl import app, flags

from lora_jax.hierarchy import base_file, evaluation, windows

_BASES = flags.DEFINE_list("bases", None, "Base model files, one row each.")
_PACKS = flags.DEFINE_list("packs", None, "Style pack folders, one column each.")
_SPLIT = flags.DEFINE_string("split", "test", "Pack split to score.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 256, "Tokens per window (BOS included).")
flags.mark_flags_as_required(["bases", "packs"])


def _row(label: str, values: list[float], widths: list[int]) -> str:
  return label.ljust(28) + "  ".join(f"{v:.4f}".rjust(w) for v, w in zip(values, widths))


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  totals, velocity, counts, columns = {}, {}, [], []
  for path in _BASES.value:
    base = base_file.load_model(path)
    if _SEQ_LEN.value > base.settings.max_len:
      raise ValueError(f"--seq_len {_SEQ_LEN.value} exceeds max_len {base.settings.max_len} of "
                       f"{path}")
    tokenizer = base_file.load_tokenizer(base.path, base.settings)
    label = f"{base.fingerprint} ({base.settings.max_len})"
    model = base.model()
    totals[label], velocity[label], counts, columns = [], [], [], []
    for pack in _PACKS.value:
      split = windows.split_windows([pack], _SPLIT.value, tokenizer, _SEQ_LEN.value)
      columns.append(split.styles[0])
      kinds = evaluation.nll_by_kind(model, base.params, windows.load_arrays(split), tokenizer)
      n = sum(k.n_tokens for k in kinds.values())
      totals[label].append(sum(k.bits_per_token * k.n_tokens for k in kinds.values()) / n)
      velocity[label].append(kinds["Velocity"].bits_per_token if "Velocity" in kinds else 0.0)
      counts.append(n)
  widths = [max(len(c), 8) for c in columns]
  header = " " * 28 + "  ".join(c.rjust(w) for c, w in zip(columns, widths))
  print(f"Held-out NLL on {_SPLIT.value} pieces, base alone, windows of {_SEQ_LEN.value} tokens "
        f"(bits per token; lower is better):")
  print(header)
  for label, values in totals.items():
    print(_row(label, values, widths))
  print("(scored tokens: " + ", ".join(f"{c}: {n}" for c, n in zip(columns, counts)) + ")")
  print("Bits per Velocity token:")
  print(header)
  for label, values in velocity.items():
    print(_row(label, values, widths))


if __name__ == "__main__":
  app.run(main)
