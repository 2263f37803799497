"""How well `lora_jax.data.duv.align` finds a .match file's true note pairs from two MIDI files.

  PYTHONPATH=. python bench/align_accuracy.py \
    --match=.cache/performances/mozart/mozart_k265_var1.match

First the plain case: the .match file written as `<name>.mid` + `<name>.score.mid` (into
--out_dir, kept, when given) and aligned as the DUV builder aligns a user's pair. Then the same performance made harder, in note arrays, with
the truth carried along: notes left out, wrong notes added next to played ones, trills added,
and the timing warped by a slow rubato. Prints recall (true pairs found) and precision (found
pairs that are true) for each.
"""

import os
import tempfile

import numpy as np
from absl import app, flags

from lora_jax.data.duv import align, match_file, match_to_midi

_MATCH = flags.DEFINE_string("match", ".cache/performances/mozart/mozart_k265_var1.match",
                             ".match file (version 5)")
_SEED = flags.DEFINE_integer("seed", 0, "seed of the perturbations")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "keep the two MIDI files here (default: a "
                               "temporary folder)")


def perturbed(notes: match_file.MatchNotes, rng: np.random.Generator, drop: float, wrong: float,
              trills: float, rubato: float):
  """(perf onset, perf pitch, true pairs) of a harder performance of the same score."""
  onset, pitch = notes.perf_onset_sec.copy(), notes.perf_pitch.copy()
  truth = dict((int(p), int(s)) for s, p in notes.true_pairs)
  keep = rng.random(len(onset)) >= drop
  span = onset.max() - onset.min()
  extra_onset, extra_pitch = [], []
  for i in np.flatnonzero(keep):
    if rng.random() < wrong:  # a neighbouring key struck with the right one
      extra_onset.append(onset[i] + rng.uniform(-0.03, 0.03))
      extra_pitch.append(pitch[i] + rng.choice([-2, -1, 1, 2]))
    if rng.random() < trills:  # a trill from the upper note, before the written one
      for k in range(4):
        extra_onset.append(onset[i] - 0.06 * (4 - k) + 0.01)
        extra_pitch.append(pitch[i] + (2 if k % 2 == 0 else 0))
  all_onset = np.concatenate([onset[keep], extra_onset])
  all_pitch = np.concatenate([pitch[keep], np.array(extra_pitch, dtype=np.int64)])
  kept_ids = np.flatnonzero(keep)
  pairs = {(truth[int(old)], new) for new, old in enumerate(kept_ids) if int(old) in truth}
  t = (all_onset - onset.min()) / span  # slow rubato: up to `rubato` of the span early or late
  warped = onset.min() + span * (t + rubato * np.sin(2 * np.pi * t) / (2 * np.pi))
  return warped, all_pitch, pairs


def main(argv):
  del argv
  name = os.path.splitext(os.path.basename(_MATCH.value))[0]
  with tempfile.TemporaryDirectory() as tmp:
    perf_path, score_path = match_to_midi.write_match_as_midi(_MATCH.value, _OUT_DIR.value or tmp,
                                                              name)
    acc = match_to_midi.alignment_accuracy(_MATCH.value, perf_path, score_path)
  if _OUT_DIR.value:
    print(f"wrote {perf_path} and {score_path}")
  print(f"{'case':<44} {'true':>5} {'found':>5} {'recall':>7} {'precision':>9}")
  print(f"{'two MIDI files written from the .match':<44} {acc.true_pairs:>5} {acc.found_pairs:>5} "
        f"{acc.recall:>7.3f} {acc.precision:>9.3f}")
  notes = match_file.read_match_notes(_MATCH.value)
  cases = (("10% of notes left out", 0.1, 0, 0, 0),
           ("10% wrong notes added", 0, 0.1, 0, 0),
           ("trills on 5% of notes", 0, 0, 0.05, 0),
           ("rubato, +-30% tempo", 0, 0, 0, 0.3),
           ("all of the above", 0.1, 0.1, 0.05, 0.3))
  for name, drop, wrong, trills, rubato in cases:
    rng = np.random.default_rng(_SEED.value)
    onset, pitch, pairs = perturbed(notes, rng, drop, wrong, trills, rubato)
    found = align.align(notes.score_onset_beats, notes.score_pitch, onset, pitch)
    ours = set(zip(found.score_index.tolist(), found.perf_index.tolist()))
    print(f"{name:<44} {len(pairs):>5} {len(ours):>5} {len(ours & pairs) / len(pairs):>7.3f} "
          f"{len(ours & pairs) / max(len(ours), 1):>9.3f}")


if __name__ == "__main__":
  app.run(main)
