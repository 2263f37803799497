"""Measures the audio analysis on the rendered evaluation set, per genre and overall.

  python bench/audio_eval_set.py --out=.cache/audio_eval_set      (build the set first)
  nice -n 5 python bench/audio_analysis_eval.py --set=.cache/audio_eval_set [--limit=60]

Prints tempo accuracy (within 4%, and within 4% of the truth, its double or half), key accuracy
(exact and MIREX-weighted) for each key profile (the default one marked), and seconds of analysis
per minute of audio (reading, tempo, key, energy and the instrument guess; the first file's numba
compilation excluded).
"""
import collections
import os
import time

from absl import flags
import numpy as np

from lora_jax import cli
from lora_jax.audio import energy, eval_set, instruments, key, load, scoring, tempo

_SET = flags.DEFINE_string("set", ".cache/audio_eval_set", "Folder built by audio_eval_set.py.")
_LIMIT = flags.DEFINE_integer("limit", None, "Evaluate every n-th piece to keep about this many.",
                              lower_bound=1)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  entries = eval_set.read_manifest(_SET.value)
  if _LIMIT.value is not None and _LIMIT.value < len(entries):
    entries = entries[::int(np.ceil(len(entries) / _LIMIT.value))]
  warm = load.load(os.path.join(_SET.value, entries[0].wav))  # numba compiles on first use
  tempo.estimate(warm.samples[:load.SAMPLE_RATE * 5], warm.sample_rate)
  key.estimate(warm.samples[:load.SAMPLE_RATE * 5], warm.sample_rate)
  instruments.features(warm.samples[:load.SAMPLE_RATE * 5], warm.sample_rate)
  rows = collections.defaultdict(lambda: collections.defaultdict(list))
  seconds_audio = seconds_spent = 0.0
  for e in entries:
    started = time.monotonic()
    audio = load.load(os.path.join(_SET.value, e.wav))
    t = tempo.estimate(audio.samples, audio.sample_rate)
    profile = key.chroma_profile(audio.samples, audio.sample_rate)
    energy.measure(audio.samples, audio.sample_rate)
    instruments.guess(instruments.features(audio.samples, audio.sample_rate))
    keys = {name: key.from_scores(key.scores(profile, name)) for name in key.PROFILES}
    seconds_spent += time.monotonic() - started
    seconds_audio += audio.seconds
    for group in (e.genre, "all"):
      r = rows[group]
      r["tempo"].append(scoring.tempo_correct(t.bpm, e.truth.bpm))
      r["tempo_oct"].append(scoring.tempo_correct(t.bpm, e.truth.bpm, octaves=True))
      for name, k in keys.items():
        r[f"exact_{name}"].append(k.tonic == e.truth.tonic and k.mode == e.truth.mode)
        r[f"mirex_{name}"].append(scoring.mirex_key_score(k.tonic, k.mode, e.truth.tonic,
                                                          e.truth.mode))
  names = list(key.PROFILES)
  header = ["group", "n", "tempo 4%", "tempo 4% x2/÷2"] + [
      f"key {n}{'*' if n == key.DEFAULT_PROFILE else ''} exact/MIREX" for n in names]
  print(" | ".join(header))
  for group in sorted(rows, key=lambda g: (g == "all", g)):
    r = rows[group]
    cells = [group, str(len(r["tempo"])), f"{np.mean(r['tempo']):.3f}",
             f"{np.mean(r['tempo_oct']):.3f}"]
    cells += [f"{np.mean(r[f'exact_{n}']):.3f} / {np.mean(r[f'mirex_{n}']):.3f}" for n in names]
    print(" | ".join(cells))
  print(f"{seconds_audio / 60:.1f} minutes of audio; analysis {60 * seconds_spent / seconds_audio:.2f}"
        f" s per minute of audio ({seconds_audio / seconds_spent:.0f}x real time)")


if __name__ == "__main__":
  cli.run(main, "audio_analysis_eval")
