"""HPSS stems on renders with a drum part whose true stems are known.

  nice -n 5 python bench/audio_stems_eval.py --set=.cache/audio_eval_set --limit=24

Each chosen render (the harmonic truth) gets a General MIDI drum part at its true beat (kick on
odd beats, snare on even ones, closed hi-hat on every half beat) rendered alone (the percussive
truth); the mix is their sum. Prints SI-SDR of HPSS's harmonic and percussive stems against the
truths, beside the SI-SDR of the unprocessed mix against each (the baseline a separator must beat).
"""
import os

from absl import flags
import numpy as np
import pretty_midi

from lora_jax import cli
from lora_jax.audio import eval_set, load, render, stems

_SET = flags.DEFINE_string("set", ".cache/audio_eval_set", "Folder built by audio_eval_set.py.")
_LIMIT = flags.DEFINE_integer("limit", 24, "Evaluate every n-th piece to keep about this many.",
                              lower_bound=1)


def drums(start: float, end: float, bpm: float) -> pretty_midi.PrettyMIDI:
  """A plain rock pattern at `bpm` from `start` to `end` (seconds)."""
  pm = pretty_midi.PrettyMIDI()
  kit = pretty_midi.Instrument(program=0, is_drum=True)
  beat = 60.0 / bpm
  for i, t in enumerate(np.arange(start, end, beat / 2)):
    hits = [42] + ([36 if (i // 2) % 2 == 0 else 38] if i % 2 == 0 else [])
    kit.notes += [pretty_midi.Note(90, p, t, t + 0.1) for p in hits]
  pm.instruments.append(kit)
  return pm


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  entries = eval_set.read_manifest(_SET.value)
  entries = entries[::int(np.ceil(len(entries) / _LIMIT.value))]
  rows = []
  for e in entries:
    harmonic = load.load(os.path.join(_SET.value, e.wav)).samples
    source = pretty_midi.PrettyMIDI(os.path.join(_SET.value, e.midi))
    notes = [n for i in source.instruments for n in i.notes]
    first, last = min(n.start for n in notes), max(n.end for n in notes)
    percussive = render.render(drums(first, last, e.truth.bpm))
    n = max(len(harmonic), len(percussive))
    harmonic = np.pad(harmonic, (0, n - len(harmonic)))
    percussive = np.pad(percussive, (0, n - len(percussive)))
    percussive *= np.sqrt(np.mean(harmonic ** 2) / (np.mean(percussive ** 2) + 1e-12))  # 0 dB
    mix = harmonic + percussive
    got = stems.hpss(mix).parts
    rows.append((stems.si_sdr(got["harmonic"], harmonic), stems.si_sdr(mix, harmonic),
                 stems.si_sdr(got["percussive"], percussive), stems.si_sdr(mix, percussive)))
  h, hm, p, pm_ = np.mean(rows, axis=0)
  print(f"{len(rows)} renders with a drum part at 0 dB")
  print("stem | HPSS SI-SDR | mix SI-SDR (baseline)")
  print(f"harmonic | {h:.1f} dB | {hm:.1f} dB")
  print(f"percussive | {p:.1f} dB | {pm_:.1f} dB")


if __name__ == "__main__":
  cli.run(main, "audio_stems_eval")
