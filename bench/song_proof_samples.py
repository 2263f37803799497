r"""WAV samples of bench/song_proof.py's models, before and after fine-tuning, and one spectrogram.

PYTHONPATH=. python bench/song_proof_samples.py --workdir=runs/song_proof --out=docs/song_proof

After bench/song_proof.py: the base, base + LoRA (q,k,v,o) and the fully fine-tuned model each
generate `--seconds` of a new-style song from the same description and seed
(`lora_jax/song/generate.py`, guidance off: our training has no condition dropout); beside them,
the first seconds of a held-out song of the new style decoded from its codes (what the codes can
sound like at best). Writes the WAVs and `spectrograms.png` (log-mel, same scale), and prints
each sample's share of frames whose mixed-stream code is among the 50 most frequent codes of the
new style's training songs.
"""

import json
import os

from absl import app, flags
import librosa
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from lora_jax.data.song import token_file
from lora_jax.song import codec as codec_lib
from lora_jax.song import generate, nll, prepare, wave_file

_WORKDIR = flags.DEFINE_string("workdir", "runs/song_proof", "bench/song_proof.py's workdir.")
_OUT = flags.DEFINE_string("out", "docs/song_proof", "Folder of the WAVs and the picture.")
_SECONDS = flags.DEFINE_float("seconds", 10.0, "Seconds per sample (at most).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed, the same for every model.")
DESCRIPTION = "Celtic fiddle tune, Acoustic Guitar (nylon), 110 bpm, G major, 6/8"
VAL_FRACTION = 0.2  # bench/song_proof.py's data.val_fraction
MODELS = (("base", "base/train"), ("lora", "new_style/lora"), ("full", "new_style/full"))


def _top_share(codes: np.ndarray, top: set) -> float:
  return float(np.mean([c in top for c in codes]))


def main(argv):
  del argv
  work = _WORKDIR.value
  os.makedirs(_OUT.value, exist_ok=True)
  codec = codec_lib.load(os.path.join(work, "base", "prepared", "audio_codec.safetensors"))
  train = nll.load_windows(os.path.join(work, "new_style", "lora", "data", "train.npz"))
  counts = np.bincount(
      np.concatenate([w[0, :n] for w, n in zip(train["codes"], train["length"])]),
      minlength=codec.code_count)
  top = set(np.argsort(counts)[::-1][:50].tolist())
  panels = []
  prepared = os.path.join(work, "new_style", "prepared")
  with open(os.path.join(prepared, "manifest.jsonl")) as f:
    held_out = [json.loads(line)["idx"] for line in f
                if prepare.is_validation(json.loads(line)["idx"], VAL_FRACTION)]
  first = token_file.read(os.path.join(prepared, f"{held_out[0]}.pt"),
                          code_size=codec.code_count).codes[0]
  first = first[:int(_SECONDS.value * codec_lib.FRAME_RATE)]
  for name, run in MODELS:
    path = os.path.join(_OUT.value, f"{name}.wav")
    song = generate.generate(generate.Request(
        output=path, lyrics="[inst-medium]", description=DESCRIPTION,
        run=os.path.join(work, run), seconds=_SECONDS.value, seed=_SEED.value, cfg_coef=1.0))
    mixed = song.codes[0, :song.frames]
    print(f"{name}: {song.frames} frames, ended {song.ended}, {len(set(mixed.tolist()))} distinct "
          f"codes, {_top_share(mixed, top):.2f} of frames among the style's 50 commonest codes")
    panels.append((f"{name}: generated", wave_file.read(path, codec.sample_rate)))
  back = codec.decode(first)
  wave_file.write(os.path.join(_OUT.value, "held_out_codec.wav"), back, codec.sample_rate)
  print(f"held-out song {held_out[0]}, codes: {len(set(first.tolist()))} distinct, "
        f"{_top_share(first, top):.2f} among the 50 commonest")
  panels.append((f"held-out guitar song {held_out[0]}, decoded from its codes", back))
  fig, axes = plt.subplots(len(panels), 1, figsize=(9, 2.0 * len(panels)), sharex=True)
  for ax, (title, wave) in zip(axes, panels):
    mel = librosa.power_to_db(librosa.feature.melspectrogram(
        y=wave, sr=codec.sample_rate, n_mels=64, hop_length=codec.hop), ref=1.0, top_db=80)
    ax.imshow(mel, origin="lower", aspect="auto", vmin=-80, vmax=0,
              extent=(0, len(wave) / codec.sample_rate, 0, 64))
    ax.set_title(title, fontsize=9)
    ax.set_ylabel("mel band")
  axes[-1].set_xlabel("seconds")
  fig.tight_layout()
  fig.savefig(os.path.join(_OUT.value, "spectrograms.png"), dpi=80)
  print(f"wrote {_OUT.value}/spectrograms.png")


if __name__ == "__main__":
  app.run(main)
