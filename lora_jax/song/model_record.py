"""`song_model.json`: what `launch/train_song.py` records beside the model it exports.

A PEFT adapter folder or a `model.pt` holds weights only, and the weights do not say how to use
them: the model's sizes and delay pattern, the base an adapter was trained on, the text tokenizer,
and above all which audio codec made the codes it learned (codes decoded by another codec are
noise). train_song writes this record into the adapter folder (`checkpoints/adapter/`, where PEFT
ignores it) or beside `checkpoints/model.pt`; `launch/generate_song.py` reads it and refuses what
does not match. JSON, no pickle.
"""

import dataclasses
import hashlib
import json
import os

from lora_jax import atomic, errors
from lora_jax.families import song_lm as song_family

NAME = "song_model.json"
FORMAT = "lora_jax.song_model"
FORMAT_VERSION = 1


class RecordError(errors.UserError):
  """A song_model.json that is missing, malformed or of another format."""


@dataclasses.dataclass(frozen=True)
class SongModelRecord:
  model: song_family.SongConfig
  training_type: str  # 'lora' or 'full'
  codecs: tuple[str, ...]  # codec file ids of the training songs ('' = unrecorded)
  codec_path: str  # where the codec was, absolute; '' = unknown
  text_tokenizer: str  # the Qwen2 tokenizer.json, absolute; '' = the byte-level default
  text_tokenizer_sha256: str  # of that file; '' with the default
  base: str  # the Flax base the adapter was trained over, absolute; '' = a random base
  base_fingerprint: str  # lora.fingerprint of that base


def file_sha256(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def write(folder: str, record: SongModelRecord) -> str:
  """`folder/song_model.json`, atomically."""
  path = os.path.join(folder, NAME)
  fields = dataclasses.asdict(record)
  fields["model"] = dataclasses.asdict(record.model)
  atomic.write_text(path, json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION,
                                      **fields}, indent=2, sort_keys=True) + "\n")
  return path


def read(folder: str, what: str) -> SongModelRecord:
  """The record in `folder`; `what` names the model it describes, for the errors."""
  path = os.path.join(folder, NAME)
  try:
    with open(path, encoding="utf-8") as f:
      raw = json.load(f)
  except FileNotFoundError:
    raise RecordError(f"{what} has no {NAME} beside it ({path}): launch/train_song.py records "
                      "there the model's sizes, its base and the codec of its songs, which the "
                      "weights alone do not say") from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise RecordError(f"{path} is not valid JSON: {e}") from None
  if not isinstance(raw, dict) or raw.get("format") != FORMAT:
    raise RecordError(f"{path} is not a {FORMAT} record")
  if raw.get("format_version") != FORMAT_VERSION:
    raise RecordError(f"{path}: record format {raw.get('format_version')}, this reads "
                      f"{FORMAT_VERSION}")
  try:
    model = song_family.SongConfig(**raw["model"])
    return SongModelRecord(model, str(raw["training_type"]), tuple(raw["codecs"]),
                           str(raw["codec_path"]), str(raw["text_tokenizer"]),
                           str(raw["text_tokenizer_sha256"]), str(raw["base"]),
                           str(raw["base_fingerprint"]))
  except (KeyError, TypeError, ValueError) as e:
    raise RecordError(f"{path} is malformed: {type(e).__name__} {e}") from None
