"""Listening to a song adapter: a few seconds of song sampled with it and from its base alone,
from the same seed, lyrics and description (the first clip it trained on), decoded by the codec
its songs were tokenized with.

Both come from `lora_jax.song.generate` (launch/generate_song.py's code): the adapter over its
base at weight 1, and the same adapter at weight 0, which is the base exactly (the merge adds
0 x BA) with the same checks, conditions and codec. The base is the job's converted
`run/base.safetensors` (what it trained over), else the studio's --song_base. Kept per (adapter,
seed) by `listen.Listener.keep`.
"""

import json
import os
import zipfile

import soundfile

from lora_jax.song import generate
from lora_jax.song import prepare_audio
from lora_jax.studio import song_jobs

SECONDS = 4.0  # at most: the song may end earlier
FALLBACK = ("[verse] la la la [chorus] oh oh", "")  # when the job's metadata is gone


class NoBase(ValueError):
  """No base to sample the adapter over."""


def base_of(job_dir: str, song_base: str) -> str:
  trained = os.path.join(song_jobs.run_dir(job_dir), "base.safetensors")
  if os.path.isfile(trained):
    return trained
  if song_base:
    return song_base
  raise NoBase(song_jobs.no_base_message())


def prompt_of(job_dir: str) -> tuple[str, str]:
  """(lyrics, description) of the job's first clip."""
  try:
    with open(os.path.join(job_dir, "metadata.jsonl"), encoding="utf-8") as f:
      first = json.loads(f.readline())
    return first["gt_lyric"], first["descriptions"]
  except (OSError, ValueError, KeyError):
    return FALLBACK


def maker(adapter_zip: str, base: str, lyrics: str, description: str, seed: int):
  """`Listener.keep`'s `make` for a song adapter (a blob written by song_jobs.adapter_zip)."""

  if lyrics.startswith("@"):  # generate reads "@path" as a file: these are the user's words
    lyrics = " " + lyrics

  def make(tmp: str) -> dict:
    with zipfile.ZipFile(adapter_zip) as z:
      z.extractall(tmp)  # our own zip: adapter/<name> members only
    folder = os.path.join(tmp, "adapter")
    samples = {}
    for which, weight in (("adapter", 1.0), ("base", 0.0)):
      song = generate.generate(generate.Request(
          output=os.path.join(tmp, f"{which}.wav"), lyrics=lyrics, description=description,
          adapter=folder, base=base, codec=os.path.join(folder, prepare_audio.CODEC_FILE),
          seconds=SECONDS, seed=seed, adapter_weight=weight))
      wave, rate = soundfile.read(song.path, dtype="float32")
      samples[which] = (wave, rate)
    return samples

  return make
