r"""python launch/train_duv_lora.py --config=configs/duv/bass.py --workdir=runs/duv_bass

A bass LoRA adapter on the DUV base bundle (configs/duv/base.py trains it first), with the DUV
seed's settings: r 8, alpha 16, dropout 0.05 on attn.q_proj/v_proj/out_proj and ff.in/out.
Writes checkpoints/duv/bass.lora; humanise with
  python launch/humanize_midi.py --model=checkpoints/duv/bass.lora --input=in.mid --output=out.mid
Bass rows (pretty_midi's instrument class 'bass'). No bass performances ship offline: build the
manifest from your own MIDI with launch/build_duv_manifest.py --out=build/duv_bass.
Variant `tiny` (`--config=configs/duv/bass.py:tiny`) is the CPU test size.
"""

import importlib.util
import os

_SPEC = importlib.util.spec_from_file_location(
    "configs_duv_base", os.path.join(os.path.dirname(os.path.abspath(__file__)), "base.py"))
base = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(base)


def get_config(arg: str | None = None):
  """The bass adapter's config; `arg` picks a variant."""
  return base.lora_config("bass", "build/duv_bass/duv_manifest_enriched.jsonl", r"(?i)bass", arg)
