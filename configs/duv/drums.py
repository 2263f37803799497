r"""python launch/train_duv_lora.py --config=configs/duv/drums.py --workdir=runs/duv_drums

The drums adapter (configs/duv/base.py's lora_config: the DUV seed's settings), on the manifest's
'drums' rows. No drum performances ship offline: build a manifest from your own MIDI with
launch/build_duv_manifest.py --out=build/duv_drums. Humanise drums with --include_drums. Variant
`tiny` is the CPU test size (tests/duv_training_test.py trains it end to end on fixtures).
"""

from lora_jax.duv import config_files

base = config_files.sibling(__file__, "base")


def get_config(arg: str | None = None):
  """The drums adapter's config; `arg` picks a variant."""
  return base.lora_config("drums", "build/duv_drums/duv_manifest_enriched.jsonl", r"(?i)drums",
                          arg)
