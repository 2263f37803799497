"""Measures the audio analysis on the rendered evaluation set, per genre and overall.

  python bench/audio_eval_set.py --out=.cache/audio_eval_set      (build the set first)
  bash scripts/fetch_recordings.sh .cache/recordings            (the real recordings, once)
  nice -n 5 python bench/audio_analysis_eval.py --set=.cache/audio_eval_set [--limit=60]

Prints tempo accuracy (within 4%, and within 4% of the truth, its double or half), key accuracy
(exact and MIREX-weighted) for each key profile (the default one marked) and for the key model
(`key_model.py`), and seconds of analysis per minute of audio (reading, tempo, key,
energy and the instrument guess; the first file's numba compilation excluded). Then the same for
the real recordings (`real_set.py`), one line per recording and their rows, unless
--recordings is empty.
"""
import collections
import os
import time

from absl import flags
import numpy as np

from lora_jax import cli
from lora_jax.audio import energy, eval_set, instruments, key, key_model, load, real_set, scoring
from lora_jax.audio import tempo

_SET = flags.DEFINE_string("set", ".cache/audio_eval_set", "Folder built by audio_eval_set.py.")
_RECORDINGS = flags.DEFINE_string("recordings", ".cache/recordings", "Folder of the real "
                                  "recordings (scripts/fetch_recordings.sh); empty: left out.")
_LIMIT = flags.DEFINE_integer("limit", None, "Evaluate every n-th piece to keep about this many.",
                              lower_bound=1)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  entries = eval_set.read_manifest(_SET.value)
  recordings = real_set.entries(_RECORDINGS.value) if _RECORDINGS.value else []  # fetched?
  if _LIMIT.value is not None and _LIMIT.value < len(entries):
    entries = entries[::int(np.ceil(len(entries) / _LIMIT.value))]
  warm = load.load(os.path.join(_SET.value, entries[0].wav))  # numba compiles on first use
  tempo.estimate(warm.samples[:load.SAMPLE_RATE * 5], warm.sample_rate)
  key_model.chromas(warm.samples[:load.SAMPLE_RATE * 5], warm.sample_rate)
  instruments.features(warm.samples[:load.SAMPLE_RATE * 5], warm.sample_rate)
  rows = collections.defaultdict(lambda: collections.defaultdict(list))
  seconds_audio = seconds_spent = 0.0
  for e in entries:
    started = time.monotonic()
    audio = load.load(os.path.join(_SET.value, e.wav))
    t = tempo.estimate(audio.samples, audio.sample_rate)
    keys = _keys(audio)
    energy.measure(audio.samples, audio.sample_rate)
    instruments.guess(instruments.features(audio.samples, audio.sample_rate))
    seconds_spent += time.monotonic() - started
    seconds_audio += audio.seconds
    for group in (e.genre, "all"):
      r = rows[group]
      r["tempo"].append(scoring.tempo_correct(t.bpm, e.truth.bpm))
      r["tempo_oct"].append(scoring.tempo_correct(t.bpm, e.truth.bpm, octaves=True))
      _score_keys(r, keys, e.truth.tonic, e.truth.mode)
  _print_table(rows)
  print(f"{seconds_audio / 60:.1f} minutes of audio; analysis {60 * seconds_spent / seconds_audio:.2f}"
        f" s per minute of audio ({seconds_audio / seconds_spent:.0f}x real time)")
  if recordings:
    _real_recordings(_RECORDINGS.value, recordings)


def _keys(audio: load.Audio) -> dict[str, key.Key]:
  """Every profile's key and the model's, from one set of chroma summaries."""
  c = key_model.chromas(audio.samples, audio.sample_rate)
  keys = {name: key.from_scores(key.scores(c.profile, name)) for name in key.PROFILES}
  keys["model"] = key_model.estimate_from(c)
  return keys


def _score_keys(r: dict, keys: dict[str, key.Key], tonic: int, mode: str) -> None:
  for name, k in keys.items():
    r[f"exact_{name}"].append(k.tonic == tonic and k.mode == mode)
    r[f"mirex_{name}"].append(scoring.mirex_key_score(k.tonic, k.mode, tonic, mode))


def _mean(values: list) -> str:
  return f"{np.mean(values):.3f}" if values else "-"


def _print_table(rows: dict) -> None:
  names = [*key.PROFILES, "model"]
  header = ["group", "n", "tempo 4%", "tempo 4% x2/÷2"] + [
      f"key {n}{'*' if n == key.DEFAULT_PROFILE else ''} exact/MIREX" for n in names]
  print(" | ".join(header))
  for group in sorted(rows, key=lambda g: (g.endswith("all"), g)):
    r = rows[group]
    cells = [group, str(len(r[f"exact_{names[0]}"])),
             f"{_mean(r['tempo'])} (n={len(r['tempo'])})" if "real" in group else _mean(r["tempo"]),
             _mean(r["tempo_oct"])]
    cells += [f"{_mean(r[f'exact_{n}'])} / {_mean(r[f'mirex_{n}'])}" for n in names]
    print(" | ".join(cells))


def _real_recordings(folder: str, recordings: list[real_set.Entry]) -> None:
  """The real recordings: each one's estimates against its truth, then the table's rows."""
  rows = collections.defaultdict(lambda: collections.defaultdict(list))
  print(f"real recordings ({folder}):")
  for e in recordings:
    audio = load.load(e.wav)
    t = tempo.estimate(audio.samples, audio.sample_rate)
    keys = _keys(audio)
    truth_bpm = f"{e.bpm:.1f}" if e.bpm is not None else "(no annotation)"
    print(f"  {e.recording.id} ({audio.seconds:.0f} s): tempo {t.bpm:.1f} vs {truth_bpm}; key "
          f"{keys['model'].name} (model), {keys[key.DEFAULT_PROFILE].name} ({key.DEFAULT_PROFILE}) "
          f"vs {e.key_name}")
    for group in (f"real {e.recording.group}", "real all"):
      r = rows[group]
      if e.bpm is not None:
        r["tempo"].append(scoring.tempo_correct(t.bpm, e.bpm))
        r["tempo_oct"].append(scoring.tempo_correct(t.bpm, e.bpm, octaves=True))
      _score_keys(r, keys, e.recording.tonic, e.recording.mode)
  _print_table(rows)


if __name__ == "__main__":
  cli.run(main, "audio_analysis_eval")
