r"""python launch/train_duv_lora.py --config=configs/duv/piano.py --workdir=runs/duv_piano

The piano adapter (configs/duv/base.py's lora_config: the DUV seed's settings), on the piano rows of
the fetched corpus (MAESTRO, POP909, the Mozart .match): the one instrument with real performances
offline. Variant `tiny` is the CPU test size.
"""

from lora_jax.duv import config_files

base = config_files.sibling(__file__, "base")


def get_config(arg: str | None = None):
  """The piano adapter's config; `arg` picks a variant."""
  return base.lora_config("piano", "build/duv/duv_manifest_enriched.jsonl", r"(?i)piano", arg)
