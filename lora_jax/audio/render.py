"""MIDI to WAV with fluidsynth and a General MIDI soundfont (Debian's fluid-soundfont-gm).

The renders are the ground truth of the audio analysis: tempo, key and notes are known from the
MIDI. fluidsynth runs as a command (no Python binding: pyfluidsynth's import side effects differ
between versions); its output is read back, mixed to mono and checked to be audible.
"""

import os
import shutil
import subprocess
import tempfile

import numpy as np
import pretty_midi
import soundfile

from lora_jax import errors

SOUNDFONTS = ("/usr/share/sounds/sf2/FluidR3_GM.sf2", "/usr/share/sounds/sf2/default-GM.sf2")
SAMPLE_RATE = 22050  # what the analysis reads at; rendering at it saves a resample


def soundfont() -> str:
  """Path of the General MIDI soundfont, or a UserError saying how to install one."""
  for path in SOUNDFONTS:
    if os.path.isfile(path):
      return path
  raise errors.UserError(f"no General MIDI soundfont at {', '.join(SOUNDFONTS)}: install Debian's "
                         "fluid-soundfont-gm (scripts/setup.sh does)")


def render(pm: pretty_midi.PrettyMIDI, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
  """Mono float32 samples of `pm` played by fluidsynth (reverb and chorus as the soundfont sets)."""
  binary = shutil.which("fluidsynth")
  if binary is None:
    raise errors.UserError("fluidsynth is not installed: apt-get install fluidsynth "
                           "(scripts/setup.sh does)")
  with tempfile.TemporaryDirectory(prefix="render_") as tmp:
    mid, wav = os.path.join(tmp, "in.mid"), os.path.join(tmp, "out.wav")
    pm.write(mid)
    done = subprocess.run([binary, "-ni", "-q", "-g", "0.6", "-r", str(sample_rate), "-T", "wav",
                           "-F", wav, soundfont(), mid], capture_output=True, text=True)
    if done.returncode != 0 or not os.path.isfile(wav):
      raise RuntimeError(f"fluidsynth failed ({done.returncode}): {done.stderr.strip()[:300]}")
    samples, rate = soundfile.read(wav, dtype="float32", always_2d=True)
  if rate != sample_rate:
    raise RuntimeError(f"fluidsynth wrote {rate} Hz, asked for {sample_rate}")
  mono = samples.mean(axis=1)
  if not np.abs(mono).max() > 1e-4:
    raise RuntimeError(f"fluidsynth rendered silence for {len(pm.instruments)} instruments")
  return mono
