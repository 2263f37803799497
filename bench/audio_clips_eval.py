"""Where clip cuts land on the rendered set: at a note onset of the source MIDI, or mid-note.

  nice -n 5 python bench/audio_clips_eval.py --set=.cache/audio_eval_set --limit=48

For every cut between two clips (pieces longer than one clip), prints the share within 50 ms of
a reference onset, and the share where a note of the source sounds across the cut with no onset
near it (a cut mid-note); a cut at evenly spaced times is the baseline.
"""
import collections
import os

from absl import flags
import numpy as np
import pretty_midi

from lora_jax import cli
from lora_jax.audio import clips, eval_set, load, tempo

_SET = flags.DEFINE_string("set", ".cache/audio_eval_set", "Folder built by audio_eval_set.py.")
_LIMIT = flags.DEFINE_integer("limit", 48, "Evaluate every n-th piece to keep about this many.",
                              lower_bound=1)
_MIN = flags.DEFINE_float("min_seconds", 10.0, "Shortest clip.")
_MAX = flags.DEFINE_float("max_seconds", 20.0, "Longest clip (below the set's 45 s pieces).")


def _placement(cut: float, onsets: np.ndarray, notes: list) -> tuple[bool, bool]:
  at_onset = bool(np.min(np.abs(onsets - cut)) <= 0.05)
  across = any(n.start < cut - 0.05 and n.end > cut + 0.05 for n in notes)
  return at_onset, across and not at_onset


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  settings = clips.ClipSettings(_MIN.value, _MAX.value, (_MIN.value + _MAX.value) / 2)
  entries = eval_set.read_manifest(_SET.value)
  entries = [e for e in entries[::int(np.ceil(len(entries) / _LIMIT.value))]
             if e.seconds > settings.max_seconds]
  found = collections.defaultdict(list)
  for e in entries:
    audio = load.load(os.path.join(_SET.value, e.wav))
    bpm = tempo.estimate(audio.samples, audio.sample_rate).bpm
    reference = pretty_midi.PrettyMIDI(os.path.join(_SET.value, e.midi))
    notes = [n for i in reference.instruments for n in i.notes]
    onsets = np.array(sorted(n.start for n in notes))
    got = clips.cut(audio.samples, audio.sample_rate, bpm, settings)
    for c in got[:-1]:
      found[(e.genre, "cut")].append(_placement(c.end, onsets, notes))
      found[("all", "cut")].append(found[(e.genre, "cut")][-1])
    for c in np.arange(settings.target_seconds, e.seconds - settings.min_seconds,
                       settings.target_seconds):
      found[(e.genre, "even")].append(_placement(float(c), onsets, notes))
      found[("all", "even")].append(found[(e.genre, "even")][-1])
  print("group | cuts | at an onset (50 ms) | mid-note | even-spaced baseline: at onset / mid-note")
  for group in sorted({g for g, _ in found}, key=lambda g: (g == "all", g)):
    cut, even = np.array(found[(group, "cut")]), np.array(found[(group, "even")])
    print(f"{group} | {len(cut)} | {cut[:, 0].mean():.2f} | {cut[:, 1].mean():.2f} | "
          f"{even[:, 0].mean():.2f} / {even[:, 1].mean():.2f}")


if __name__ == "__main__":
  cli.run(main, "audio_clips_eval")
