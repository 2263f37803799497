"""DUV humanisation data: manifest, enriched manifest, scaler, phrase windows and baselines.

From the real performances the setup fetches:
  bash scripts/fetch_performances.sh .cache/performances
  python launch/build_duv_manifest.py --cache=.cache/performances --out=build/duv \
    --sources=maestro,pop909,mozart --max_len=256
From a folder of your own takes (MIDI recordings, .match files, a take.mid beside its score
take.score.mid), for one instrument:
  python launch/build_duv_manifest.py --from_dir=my_takes --instrument=guitar --out=build/duv_guitar
which prints one line per file (tracks, notes, grid fit, or why it was dropped); then train the
instrument's adapter with launch/train_duv_lora.py and configs/duv/guitar.py (README, "Your own
music").

Bad input ends in one error line and exit status 1, before anything is written.
"""

import json

from absl import flags, logging

from lora_jax import cli
from lora_jax.data.duv import build as duv_build
from lora_jax.data.duv import manifest as duv_manifest
from lora_jax.duv import takes

_CACHE = flags.DEFINE_string("cache", ".cache/performances", "performance cache "
                             "(scripts/fetch_performances.sh fills it)")
_OUT = flags.DEFINE_string("out", "build/duv", "folder for the manifest, scaler, windows, report")
_SOURCES = flags.DEFINE_list("sources", ["maestro", "pop909", "mozart"], "sources to use")
_FROM_DIR = flags.DEFINE_string("from_dir", None, "a folder of your own performances (.mid, "
                                ".midi, .match, at any depth; <name>.score.mid beside <name>.mid "
                                "is its score) instead of --sources")
_INSTRUMENT = flags.DEFINE_enum("instrument", None, list(takes.INSTRUMENTS), "with --from_dir: "
                                "the instrument its tracks are (and are labelled)")
_GRID = flags.DEFINE_enum("grid", "tempo_map", list(takes.GRIDS), "with --from_dir: the beat grid "
                          "of a MIDI take: its tempo map (played to a click) or one estimated "
                          "tempo (played freely)")
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
  if (_FROM_DIR.value is None) != (_INSTRUMENT.value is None):
    raise ValueError("--from_dir and --instrument go together")
  config = duv_build.BuildConfig(
      cache_dir=_CACHE.value, out_dir=_OUT.value, sources=tuple(_SOURCES.value),
      filters=duv_manifest.Filters(_MIN_NOTES.value, _MIN_DURATION.value, _MAX_DURATION.value),
      valid_fraction=_VALID_FRACTION.value, max_len=_MAX_LEN.value, stride=_STRIDE.value,
      deadpan_velocity=_VELOCITY.value)
  if _FROM_DIR.value is None:
    report = duv_build.build_duv_dataset(config)
    logging.info("wrote %s", config.out_dir)
    print(json.dumps(report, indent=1))
    return
  report, lines = takes.build_from_dir(_FROM_DIR.value, config, _INSTRUMENT.value, _GRID.value)
  print("\n".join(line.text() for line in lines))
  for split, entry in report["kept"][takes.SOURCE].items():
    print(f"{split}: {entry['pieces']} pieces, {entry['tracks']} tracks, {entry['notes']} notes")
  print(f"wrote {config.out_dir}/duv_manifest_enriched.jsonl and the rest of the data set")


if __name__ == "__main__":
  cli.run(main, "build_duv_manifest")
