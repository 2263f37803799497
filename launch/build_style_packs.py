"""Builds style packs: from your own folder of MIDI files, a few files, or the music21 corpus.

  python launch/build_style_packs.py --from_dir=my_music --out=style_packs
  python launch/build_style_packs.py --from_files=a.mid,b.mid,c.mid --style=pop/dance_pop \
      --out=style_packs
  python launch/build_style_packs.py --out=style_packs --max_pieces=100 --workers=2 \
      --styles=celtic_fiddle,essen_folk

`--from_dir` reads my_music/<genre>/[<sub_style>/] (files in refs_midi/ or directly; see
lora_jax/data/style_packs/folder.py) and prints one report: per style what was packed and its splits,
then every file left out with its reason. Bad input ends in one error line and exit status 1.
"""
from absl import flags
from absl import logging

from lora_jax import cli
from lora_jax.audio import service as audio_service
from lora_jax.data import midi_file
from lora_jax.data.style_packs import corpus as style_corpus
from lora_jax.data.style_packs import folder as folder_packs

_OUT = flags.DEFINE_string("out", "style_packs", "Root directory of the packs.")
_FROM_DIR = flags.DEFINE_string("from_dir", None, "Your folder: <genre>/[<sub_style>/] of MIDI "
                                "files; --out equal to it writes the manifests in place.")
_FROM_FILES = flags.DEFINE_list("from_files", None, "MIDI files for one style (with --style).")
_STYLE = flags.DEFINE_string("style", None, "With --from_files: 'genre' or 'genre/sub_style'.")
_VAL_FRACTION = flags.DEFINE_float("validation_fraction", 0.1, "Share of a style's pieces for "
                                   "validation (by a hash of each file's bytes).")
_TEST_FRACTION = flags.DEFINE_float("test_fraction", 0.1, "Share of a style's pieces for test.")
_MIN_VAL = flags.DEFINE_integer("min_validation", 1, "Fewest validation pieces per style.")
_MIN_TEST = flags.DEFINE_integer("min_test", 1, "Fewest test pieces per style.")
_MAX_NOTES = flags.DEFINE_integer("max_notes", midi_file.Limits.max_notes,
                                  "A file with more notes is left out.")
_MAX_DURATION = flags.DEFINE_float("max_duration_sec", midi_file.Limits.max_duration_sec,
                                   "A longer file is left out.")
_MAX_PIECES = flags.DEFINE_integer("max_pieces", None, "Corpus: cap on pieces per style.",
                                   lower_bound=1)
_STYLES = flags.DEFINE_list("styles", list(style_corpus.GENRES),
                            f"Corpus: genres to build, from {sorted(style_corpus.GENRES)}.")
_TRANSCRIBE = flags.DEFINE_bool("transcribe_audio", False, "With --from_dir: pack each style's "
                                 "audio (refs_audio/, or .wav/.mp3/... files) as MIDI transcribed "
                                 "by basic-pitch (note F about 0.42 on rendered pieces: rough; "
                                 "cached by content in <out>/<style>/_transcribed/).")
_WORKERS = flags.DEFINE_integer("workers", 2, "Corpus: conversion processes.", lower_bound=1)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  if _FROM_DIR.value is not None or _FROM_FILES.value is not None:
    if _FROM_DIR.value is not None and _FROM_FILES.value is not None:
      raise ValueError("give --from_dir or --from_files, not both")
    if (_FROM_FILES.value is not None) != (_STYLE.value is not None):
      raise ValueError("--from_files and --style go together")
    split = folder_packs.SplitSettings(_VAL_FRACTION.value, _TEST_FRACTION.value, _MIN_VAL.value,
                                       _MIN_TEST.value)
    limits = midi_file.Limits(_MAX_NOTES.value, _MAX_DURATION.value)
    if _TRANSCRIBE.value and _FROM_DIR.value is None:
      raise ValueError("--transcribe_audio goes with --from_dir")
    transcriber = audio_service.transcribe_cached if _TRANSCRIBE.value else None
    report = (folder_packs.build_from_dir(_FROM_DIR.value, _OUT.value, split, limits, transcriber)
              if _FROM_DIR.value is not None else
              folder_packs.build_from_files(_FROM_FILES.value, _STYLE.value, _OUT.value, split,
                                            limits))
    print("\n".join(report.lines()))
    if not report.packs:
      raise ValueError("no pack could be built: see the report above")
    print(f"wrote {len(report.packs)} packs under {_OUT.value}")
    return
  stats = style_corpus.build_style_packs(_OUT.value, _STYLES.value, _MAX_PIECES.value,
                                         _WORKERS.value)
  for s in stats.styles:
    logging.info("%-26s available %5d  selected %5d  converted %5d  cached %5d  failed %3d  "
                 "dropped notes %4d  meters %3d", s.style, s.n_available, s.n_selected,
                 s.n_converted, s.n_cached, s.n_failed, s.n_dropped_notes, s.n_dropped_meters)
  logging.info("%d failures (see <out>/<genre>/failures.json); %.1f s",
               len(stats.failures), stats.seconds)


if __name__ == "__main__":
  cli.run(main, "build_style_packs")
