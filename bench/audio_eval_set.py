"""Builds the rendered evaluation set of the audio analysis (see lora_jax/audio/eval_set.py).

  python bench/audio_eval_set.py --out=.cache/audio_eval_set            (224 pieces, ~5 min)
  python bench/audio_eval_set.py --out=/tmp/small --per_genre=3 --max_seconds=20
  python bench/audio_eval_set.py --out=.cache/audio_genre_set --shared_instruments
  python bench/audio_eval_set.py --out=.cache/audio_key_train_set --per_genre=80 \
      --exclude_set=.cache/audio_eval_set          (the key model's fitting set, ~8 min)

A second run reuses every render whose recipe is unchanged.
"""
import os

from absl import flags

from lora_jax import cli
from lora_jax.audio import eval_set

_OUT = flags.DEFINE_string("out", ".cache/audio_eval_set", "Folder of the set.")
_PER_GENRE = flags.DEFINE_integer("per_genre", None, "Pieces per genre (default: the set's own "
                                  "counts, 224 in all).", lower_bound=1)
_MAX_SECONDS = flags.DEFINE_float("max_seconds", 45.0, "Each piece is cut after this.")
_EXCLUDE = flags.DEFINE_string("exclude_set", None, "A built set whose pieces are left out (the "
                               "key model's fitting set excludes the evaluation set's).")
_SHARED = flags.DEFINE_bool("shared_instruments", False, "Every genre played by the same "
                            "instruments (the genre set: .cache/audio_genre_set).")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  plans = eval_set.GENRE_PLANS if _SHARED.value else eval_set.DEFAULT_PLANS
  if _PER_GENRE.value is not None:
    plans = tuple(eval_set.GenrePlan(p.genre, _PER_GENRE.value, p.programs, p.bpm_range)
                  for p in plans)
  exclude = frozenset()
  if _EXCLUDE.value is not None:
    if not os.path.isfile(os.path.join(_EXCLUDE.value, eval_set.MANIFEST)):
      raise ValueError(f"--exclude_set={_EXCLUDE.value} has no {eval_set.MANIFEST}: build it first")
    exclude = frozenset(e.id for e in eval_set.read_manifest(_EXCLUDE.value))
  entries = eval_set.build(_OUT.value, plans, _MAX_SECONDS.value, exclude)
  keys = {e.truth.key_name for e in entries}
  minutes = sum(e.seconds for e in entries) / 60
  print(f"{len(entries)} pieces, {minutes:.1f} minutes, {len(keys)} of 24 keys, in {_OUT.value}")


if __name__ == "__main__":
  cli.run(main, "audio_eval_set")
