r"""python launch/train_duv_lora.py --config=configs/duv/piano.py --workdir=runs/duv_piano

A piano LoRA adapter on the DUV base bundle (configs/duv/base.py trains it first), with the DUV
seed's settings: r 8, alpha 16, dropout 0.05 on attn.q_proj/v_proj/out_proj and ff.in/out.
Writes checkpoints/duv/piano.lora; humanise with
  python launch/humanize_midi.py --model=checkpoints/duv/piano.lora --input=in.mid --output=out.mid
Piano rows of the fetched corpus (MAESTRO, POP909, the Mozart .match): the one instrument with real
performances offline.
Variant `tiny` (`--config=configs/duv/piano.py:tiny`) is the CPU test size.
"""

import importlib.util
import os

_SPEC = importlib.util.spec_from_file_location(
    "configs_duv_base", os.path.join(os.path.dirname(os.path.abspath(__file__)), "base.py"))
base = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(base)


def get_config(arg: str | None = None):
  """The piano adapter's config; `arg` picks a variant."""
  return base.lora_config("piano", "build/duv/duv_manifest_enriched.jsonl", r"(?i)piano", arg)
