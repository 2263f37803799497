r"""python launch/train_duv_lora.py --config=configs/duv/guitar.py --workdir=runs/duv_guitar

The guitar adapter (configs/duv/base.py's lora_config: the DUV seed's settings), on the rows of
pretty_midi's instrument class 'guitar'. No guitar performances ship offline: build a manifest from
your own MIDI with launch/build_duv_manifest.py --out=build/duv_guitar. Variant `tiny` is the CPU
test size (tests/duv_training_test.py trains it end to end on fixtures).
"""

from lora_jax.duv import config_files

base = config_files.sibling(__file__, "base")


def get_config(arg: str | None = None):
  """The guitar adapter's config; `arg` picks a variant."""
  return base.lora_config("guitar", "build/duv_guitar/duv_manifest_enriched.jsonl", r"(?i)guitar",
                          arg)
