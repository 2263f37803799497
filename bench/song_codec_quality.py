r"""Reconstruction quality of the default song codec on held-out real audio: README's figures.

PYTHONPATH=. python bench/song_codec_quality.py --fit=8 --held_out=2

Bach chorales from the music21 corpus, rendered by fluidsynth with the General MIDI soundfont at
24 kHz, are the audio: the codec (lora_jax/song/codec.py, 80 mel bands, 128 x 128 codes as for
model.code_size 16384) is fitted on the first `--fit` and measured on the next `--held_out`,
mixed stream. Printed per held-out piece and averaged: the quantiser alone (mel SNR of decoded
frames), Griffin-Lim alone on the unquantised frames, and the whole round trip (LSD and mel SNR
against the original; lora_jax/song/codec_quality.py defines them).
"""

import os
import subprocess
import tempfile

from absl import app, flags
import music21
import numpy as np

from lora_jax.song import codec as codec_lib
from lora_jax.song import codec_quality, separate, wave_file

_FIT = flags.DEFINE_integer("fit", 8, "Chorales the codec is fitted on.")
_HELD_OUT = flags.DEFINE_integer("held_out", 2, "Chorales it is measured on.")
_OUT = flags.DEFINE_string("wav_dir", "", "Also write each held-out original and round trip.")
RATE = 24000
SOUNDFONT = "/usr/share/sounds/sf2/FluidR3_GM.sf2"


def _render(name: str, folder: str) -> np.ndarray:
  mid, wav = os.path.join(folder, "x.mid"), os.path.join(folder, "x.wav")
  music21.corpus.parse(name).write("midi", fp=mid)
  subprocess.run(["fluidsynth", "-ni", "-q", "-F", wav, "-r", str(RATE), SOUNDFONT, mid],
                 check=True, capture_output=True)
  return wave_file.read(wav, RATE)


def main(argv):
  del argv
  names = [str(p) for p in music21.corpus.getComposer("bach")
           if str(p).endswith(".mxl")][:_FIT.value + _HELD_OUT.value]
  with tempfile.TemporaryDirectory() as tmp:
    waves = [_render(n, tmp) for n in names]
  features = {s: [] for s in codec_lib.STREAMS}
  for wave in waves[:_FIT.value]:
    for s, w in zip(codec_lib.STREAMS, (wave, *separate.harmonic_percussive(wave, RATE))):
      features[s].append(codec_lib.log_mel(w, RATE, 80))
  codec = codec_lib.fit(features, sample_rate=RATE, n_mels=80, separator="hpss",
                        code_size=16384)
  print(f"fitted on {_FIT.value} chorales, {sum(len(w) for w in waves[:_FIT.value]) / RATE:.0f} s")
  rows = []
  for name, wave in zip(names[_FIT.value:], waves[_FIT.value:]):
    frames = codec.features(wave)
    codes = codec.streams["mixed"].quantise(frames)
    back = codec.decode(codes)
    vocoded = codec_lib.synthesise(frames, RATE)
    ref = wave[:len(back)]
    row = (codec_quality.code_mel_snr(frames, codec.streams["mixed"].dequantise(codes)),
           codec_quality.log_spectral_distance(ref, vocoded, RATE),
           codec_quality.mel_snr(ref, vocoded, RATE),
           codec_quality.log_spectral_distance(ref, back, RATE),
           codec_quality.mel_snr(ref, back, RATE))
    rows.append(row)
    print(f"{os.path.basename(name)} ({len(wave) / RATE:.0f} s, {len(np.unique(codes))} distinct "
          "codes): quantiser mel SNR %.1f dB | Griffin-Lim alone LSD %.1f dB, mel SNR %.1f dB | "
          "round trip LSD %.1f dB, mel SNR %.1f dB" % row)
    if _OUT.value:
      stem = os.path.join(_OUT.value, os.path.basename(name).split(".")[0])
      wave_file.write(stem + "_original.wav", ref, RATE)
      wave_file.write(stem + "_codec.wav", back, RATE)
  print("mean: quantiser mel SNR %.1f dB | Griffin-Lim alone LSD %.1f dB, mel SNR %.1f dB | "
        "round trip LSD %.1f dB, mel SNR %.1f dB" % tuple(np.mean(rows, axis=0)))


if __name__ == "__main__":
  app.run(main)
