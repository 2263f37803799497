"""Note-level F-measure of audio to MIDI (basic-pitch's ONNX model) on the rendered set.

  nice -n 5 python bench/audio_transcription_eval.py --set=.cache/audio_eval_set --limit=24

Each render is transcribed and compared with the MIDI it was rendered from: a note is found when
its pitch matches within 50 cents and its onset within 50 ms (mir_eval, offsets ignored).
"""
import collections
import os
import time

from absl import flags
import numpy as np
import pretty_midi

from lora_jax import cli
from lora_jax.audio import eval_set, transcribe

_SET = flags.DEFINE_string("set", ".cache/audio_eval_set", "Folder built by audio_eval_set.py.")
_LIMIT = flags.DEFINE_integer("limit", 24, "Evaluate every n-th piece to keep about this many.",
                              lower_bound=1)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  entries = eval_set.read_manifest(_SET.value)
  entries = entries[::int(np.ceil(len(entries) / _LIMIT.value))]
  scores = collections.defaultdict(list)
  spent = audio = 0.0
  for e in entries:
    started = time.monotonic()
    estimate = transcribe.transcribe(os.path.join(_SET.value, e.wav))
    spent += time.monotonic() - started
    audio += e.seconds
    reference = pretty_midi.PrettyMIDI(os.path.join(_SET.value, e.midi))
    for group in (e.genre, "all"):
      scores[group].append(transcribe.note_f_measure(reference, estimate))
  print("group | n | precision | recall | F")
  for group in sorted(scores, key=lambda g: (g == "all", g)):
    p, r, f = np.mean(scores[group], axis=0)
    print(f"{group} | {len(scores[group])} | {p:.3f} | {r:.3f} | {f:.3f}")
  print(f"{audio / 60:.1f} minutes of audio; {60 * spent / audio:.1f} s per minute of audio")


if __name__ == "__main__":
  cli.run(main, "audio_transcription_eval")
