"""Add the hint features (strum direction, sections, swing) to a DUV JSONL manifest: the seed's
`scripts/enrich_manifest.py`.

python launch/enrich_manifest.py --input=build/duv/duv_manifest.jsonl \
    --output=build/duv/duv_manifest_enriched.jsonl

Every row is checked as training reads it; the output is written atomically.
"""

from absl import flags

from lora_jax import cli
from lora_jax.data.duv import manifest as duv_manifest

_INPUT = flags.DEFINE_string("input", None, "A DUV JSONL manifest.")
_OUTPUT = flags.DEFINE_string("output", None, "Where the enriched manifest goes.")
flags.mark_flags_as_required(["input", "output"])


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  rows = duv_manifest.enrich_manifest(_INPUT.value, _OUTPUT.value)
  print(f"wrote {_OUTPUT.value}: {len(rows)} rows")


if __name__ == "__main__":
  cli.run(main, "enrich_manifest")
