"""DUV humanisation data: manifest, enriched manifest, scaler, phrase windows and baselines.

bash scripts/fetch_performances.sh .cache/performances
python launch/build_duv_manifest.py --cache=.cache/performances --out=build/duv \
  --sources=maestro,pop909,mozart --max_len=256

Bad input ends in one error line and exit status 1, before anything is written.
"""

import json

from absl import flags, logging

from lora_jax import cli
from lora_jax.data import duv_build, duv_manifest

_CACHE = flags.DEFINE_string("cache", ".cache/performances", "performance cache "
                             "(scripts/fetch_performances.sh fills it)")
_OUT = flags.DEFINE_string("out", "build/duv", "folder for the manifest, scaler, windows, report")
_SOURCES = flags.DEFINE_list("sources", ["maestro", "pop909", "mozart"], "sources to use")
_MAX_LEN = flags.DEFINE_integer("max_len", 256, "notes per phrase window")
_STRIDE = flags.DEFINE_integer("stride", 128, "notes between window starts")
_MIN_NOTES = flags.DEFINE_integer("min_notes", 64, "drop tracks with fewer notes")
_MIN_DURATION = flags.DEFINE_float("min_duration_sec", 3.0, "drop shorter tracks")
_MAX_DURATION = flags.DEFINE_float("max_duration_sec", 3600.0, "drop longer tracks (the seed's "
                                   "600 drops 6 of the 10 MAESTRO recordings)")
_VALID_FRACTION = flags.DEFINE_float("valid_fraction", 0.2, "share of pieces held out, by a "
                                     "hash of the piece id")
_VELOCITY = flags.DEFINE_integer("deadpan_velocity", 64, "constant velocity of the deadpan input")


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  config = duv_build.BuildConfig(
      cache_dir=_CACHE.value, out_dir=_OUT.value, sources=tuple(_SOURCES.value),
      filters=duv_manifest.Filters(_MIN_NOTES.value, _MIN_DURATION.value, _MAX_DURATION.value),
      valid_fraction=_VALID_FRACTION.value, max_len=_MAX_LEN.value, stride=_STRIDE.value,
      deadpan_velocity=_VELOCITY.value)
  report = duv_build.build_duv_dataset(config)
  logging.info("wrote %s", config.out_dir)
  print(json.dumps(report, indent=1))


if __name__ == "__main__":
  cli.run(main, "build_duv_manifest")
