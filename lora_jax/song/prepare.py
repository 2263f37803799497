"""The fork's prepared folder (`manifest.jsonl` + `{idx}.pt` token files) as training windows.

Each song becomes overlapping windows of `model.frames` frames covering all of it
(`lora_jax.data.song.windows`), with its lyrics and description encoded by the offline byte-level
tokenizer (`lora_jax.data.song.text`) or, given one, the user's Qwen2 tokenizer.json as the original
tokenizes (`lora_jax.data.song.qwen_text`). With `prompt_audio` in the model's conditions (as in the released checkpoints) the prompt is
what the fork trains with: no reference audio, `model.prompt_len` frames of the special token.
Songs, not windows, are split into training and
validation, by a hash of their idx, so a song never validates what it trained. Every bad row (a
missing or unreadable token file, codes out of range, an unknown section tag, a lyric too long, a
duplicate idx) is reported by name and the rest prepares. `collect` builds the windows in memory
and `write` writes them, so that a caller checks them (against the batch sizes) before anything is
on disk; `prepare` does both.
"""

import dataclasses
import hashlib
import json
import os

import numpy as np

from lora_jax import atomic, errors
from lora_jax.data.song import qwen_text
from lora_jax.data.song import text as song_text
from lora_jax.data.song import token_file
from lora_jax.data.song import windows as song_windows
from lora_jax.families import song_lm as song_family
from lora_jax.interop.flax_weights import WeightFileError


class SongDataError(errors.UserError):
  """A prepared folder with no usable song, or no manifest."""


@dataclasses.dataclass(frozen=True)
class Prepared:
  train_path: str
  val_path: str
  n_train: int  # windows
  n_val: int
  songs: int
  problems: tuple[str, ...]  # one line per dropped row


def is_validation(idx: str, fraction: float) -> bool:
  digest = hashlib.sha256(idx.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def _rows(manifest: str) -> list[tuple[int, dict | None, str]]:
  out = []
  with open(manifest, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        out.append((n, None, f"not JSON ({e.msg})"))
        continue
      if not isinstance(row, dict) or not isinstance(row.get("token_path"), str):
        out.append((n, None, "has no token_path"))
        continue
      out.append((n, row, ""))
  return out


def _song(path: str, model: song_family.SongConfig, overlap: int, text
          ) -> tuple[dict[str, np.ndarray], str]:
  song = token_file.read(path, code_depth=model.code_depth, code_size=model.code_size)
  try:
    lyrics, sections = text.encode_lyrics(song.lyrics, model.lyrics_len)
  except ValueError as e:
    raise ValueError(f"{e} (model.lyrics_len)" if "max_len" in str(e) else str(e)) from None
  try:
    style = text.encode_text(song.descriptions, model.style_len)
  except ValueError as e:
    raise ValueError(f"descriptions: {e} (model.style_len)") from None
  windows = song_windows.cut(song.codes, model.frames, overlap)
  n = len(windows["length"])
  out = {**windows, "lyrics": np.tile(lyrics, (n, 1)), "sections": np.tile(sections, (n, 1)),
         "style": np.tile(style, (n, 1))}
  if model.prompt_len:  # as the fork trains: no reference audio, a prompt of special tokens
    special = model.lm_config("float32").special_token
    out["prompt"] = np.full((n, model.code_depth, model.prompt_len), special, np.int32)
  return out, song.codec


@dataclasses.dataclass(frozen=True)
class Collected:
  """The windows of a prepared folder, in memory: nothing written yet."""

  train: dict  # array name -> [windows, ...]
  val: dict
  songs: int
  problems: tuple[str, ...]  # one line per dropped row
  codecs: tuple[str, ...]  # the distinct codec ids the token files name ('' = unrecorded)


def collect(prepared_dir: str, model: song_family.SongConfig, *, val_fraction: float,
            overlap: int, text_tokenizer: str = "") -> Collected:
  """The training and validation windows of the folder, in memory.

  Lyrics and descriptions are tokenized by `text_tokenizer` (a Qwen2 tokenizer.json, as the
  original's) or, when it is '', by the offline byte-level default.
  """
  text = qwen_text.QwenText(text_tokenizer) if text_tokenizer else song_text.ByteText()
  if text.vocab_size > model.text_vocab_size:
    raise SongDataError(f"model.text_vocab_size {model.text_vocab_size} is below the "
                        f"tokenizer's {text.vocab_size} ids"
                        + (f" ({text_tokenizer})" if text_tokenizer else " (byte-level default)"))
  manifest = os.path.join(prepared_dir, "manifest.jsonl")
  if not os.path.isfile(manifest):
    raise SongDataError(f"{manifest} does not exist: the prepared folder holds the fork's "
                        "manifest.jsonl and {idx}.pt token files")
  parts = {"train": [], "val": []}
  problems, seen, codecs = [], set(), set()
  for line, row, problem in _rows(manifest):
    where = f"{manifest}:{line}"
    if row is None:
      problems.append(f"{where}: {problem}")
      continue
    idx = str(row.get("idx", line))
    if idx in seen:
      problems.append(f"{where}: duplicate idx {idx!r}")
      continue
    seen.add(idx)
    path = row["token_path"]
    if not os.path.isabs(path) and not os.path.exists(path):
      path = os.path.join(prepared_dir, os.path.basename(path))
    try:
      song, codec = _song(path, model, overlap, text)
    except (OSError, ValueError, WeightFileError) as e:
      problems.append(f"{where} (idx {idx}): {e}")
      continue
    codecs.add(codec)
    parts["val" if is_validation(idx, val_fraction) else "train"].append(song)
  if not parts["train"] or not parts["val"]:
    raise SongDataError(f"{prepared_dir}: {len(parts['train'])} training and "
                        f"{len(parts['val'])} validation songs after dropping "
                        f"{len(problems)} rows; both need at least one"
                        + (f" (first problem: {problems[0]})" if problems else ""))
  arrays = {split: {k: np.concatenate([s[k] for s in songs]) for k in songs[0]}
            for split, songs in parts.items()}
  return Collected(arrays["train"], arrays["val"], len(parts["train"]) + len(parts["val"]),
                   tuple(problems), tuple(sorted(codecs)))


def write(collected: Collected, out_dir: str) -> Prepared:
  """`out_dir/train.npz` and `out_dir/val.npz`, together, atomically."""
  paths = [os.path.join(out_dir, f"{s}.npz") for s in ("train", "val")]
  with atomic.atomic_paths(*paths) as tmp:
    for arrays, path in zip((collected.train, collected.val), tmp):
      with open(path, "wb") as f:
        np.savez(f, **arrays)
  return Prepared(*paths, len(collected.train["length"]), len(collected.val["length"]),
                  collected.songs, collected.problems)


def prepare(prepared_dir: str, model: song_family.SongConfig, out_dir: str, *,
            val_fraction: float, overlap: int, text_tokenizer: str = "") -> Prepared:
  """`collect`, then `write` into `out_dir`."""
  return write(collect(prepared_dir, model, val_fraction=val_fraction, overlap=overlap,
                       text_tokenizer=text_tokenizer), out_dir)
