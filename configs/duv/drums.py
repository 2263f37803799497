r"""python launch/train_duv_lora.py --config=configs/duv/drums.py --workdir=runs/duv_drums

A drums LoRA adapter on the DUV base bundle (configs/duv/base.py trains it first), with the DUV
seed's settings: r 8, alpha 16, dropout 0.05 on attn.q_proj/v_proj/out_proj and ff.in/out.
Writes checkpoints/duv/drums.lora; humanise with
  python launch/humanize_midi.py --model=checkpoints/duv/drums.lora --include_drums --input=in.mid \
    --output=out.mid
Drum rows (the manifest's instrument 'drums'). No drum performances ship offline: build the
manifest from your own MIDI with launch/build_duv_manifest.py --out=build/duv_drums. Humanise drums
with --include_drums.
Variant `tiny` (`--config=configs/duv/drums.py:tiny`) is the CPU test size.
"""

import importlib.util
import os

_SPEC = importlib.util.spec_from_file_location(
    "configs_duv_base", os.path.join(os.path.dirname(os.path.abspath(__file__)), "base.py"))
base = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(base)


def get_config(arg: str | None = None):
  """The drums adapter's config; `arg` picks a variant."""
  return base.lora_config("drums", "build/duv_drums/duv_manifest_enriched.jsonl",
                          r"(?i)drums", arg)
