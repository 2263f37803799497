r"""python launch/train_duv_lora.py --config=configs/duv/bass.py --workdir=runs/duv_bass

The bass adapter, with configs/duv/base.py's lora_config (the DUV seed's settings). It trains on
the tracks whose General MIDI program is a bass (32-39: pretty_midi's class 'bass'). No recorded
bass performances ship offline, so build the manifest from your own MIDI with
launch/build_duv_manifest.py --out=build/duv_bass.
tests/duv_training_test.py trains the `tiny` variant end to end on fixtures.
"""

from lora_jax.duv import config_files

base = config_files.sibling(__file__, "base")


def get_config(arg: str | None = None):
  """The bass adapter's config; `arg` picks a variant."""
  return base.lora_config("bass", "build/duv_bass/duv_manifest_enriched.jsonl", r"(?i)bass", arg)
