"""Builds style packs from the music21 corpus.

  python launch/build_style_packs.py --out=style_packs --max_pieces=100 --workers=2 \
      --styles=celtic_fiddle,essen_folk

Bad input ends in one error line and exit status 1.
"""
from absl import flags
from absl import logging

from lora_jax import cli
from lora_jax.data import style_corpus

_OUT = flags.DEFINE_string("out", "style_packs", "Root directory of the packs.")
_MAX_PIECES = flags.DEFINE_integer("max_pieces", None, "Cap on pieces per style (all if unset).",
                                   lower_bound=1)
_STYLES = flags.DEFINE_list("styles", list(style_corpus.GENRES),
                            f"Genres to build, from {sorted(style_corpus.GENRES)}.")
_WORKERS = flags.DEFINE_integer("workers", 2, "Conversion processes.", lower_bound=1)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
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
