"""`launch/generate_song.py`: lyrics + a description (+ reference audio) -> a WAV, from a song LM
trained by `launch/train_song.py`.

The model is one of: a training output folder (`run`: whichever of `checkpoints/adapter/` and
`checkpoints/model.pt` it exported), a PEFT adapter folder over a base (`adapter`, `base`), or a
whole `model.pt` (`model`: full fine-tuning's, or an adapter merged into its base). Beside it,
train_song's `song_model.json` (model_record.py) gives the sizes, the base the adapter was
trained on, the text tokenizer and the codec of the training songs.

Order: every input is read and checked before any sampling, and the WAV is the only thing
written, atomically, at the end. Checks: the settings (finite, in range), the output path, the
lyrics' section tags and lengths, the codec file (its hash must be the one the training songs
were tokenized with: codes decoded by another codec are noise), the text tokenizer (its hash),
the weights (strict, finite), an adapter's modules and shapes and the base's fingerprint (an
adapter trained over another base is refused), the prompt audio's length.

Sampling: the adapter is merged into the base in float32 at `adapter_weight` times its trained
scale (`lora.merge`: the exact sum the factorised forward computes, one product per kernel
instead of one per step), then `models/song/sample.py`'s cached decoder samples the codes over the
delay pattern with classifier-free guidance. The unconditional rows are the original's: each text
its start token alone, no section, and a prompt of special tokens. The mixed stream's codes up to
its end of sequence are decoded by the codec (Griffin-Lim with a fixed seed), so the same seed
and inputs give the same WAV, byte for byte.
"""

import dataclasses
import os

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from lora_jax import errors, finite, lora
from lora_jax.data.song import qwen_text
from lora_jax.data.song import text as song_text
from lora_jax.families import song_lm as song_family
from lora_jax.interop import flax_weights, peft, song_lm_weights
from lora_jax.models.song import lm as song_lm
from lora_jax.models.song import sample as song_sample
from lora_jax.song import codec as codec_lib
from lora_jax.song import model_record
from lora_jax.song import wave_file


class GenerateError(errors.UserError):
  """Generation settings or inputs that cannot make a song."""


@dataclasses.dataclass(frozen=True)
class Request:
  """What `launch/generate_song.py` asks for (its flags)."""

  output: str  # the WAV to write
  lyrics: str  # the text, or @path of a UTF-8 file holding it
  description: str = ""
  run: str = ""  # a train_song output folder; or
  adapter: str = ""  # a PEFT adapter folder written by train_song (with `base`, or its own); or
  model: str = ""  # a whole model: model.pt or Flax .safetensors
  base: str = ""  # the adapter's base (model.pt or .safetensors); '' = the one recorded
  codec: str = ""  # the codec .safetensors; '' = the one recorded
  prompt_audio: str = ""  # reference audio, for a model with the prompt_audio condition
  seconds: float = 10.0  # at most: the song ends earlier at its end of sequence
  seed: int = 0
  temperature: float = 1.0
  top_k: int = 50
  cfg_coef: float = 1.5
  adapter_weight: float = 1.0


@dataclasses.dataclass(frozen=True)
class Song:
  path: str
  frames: int  # code frames decoded
  sample_rate: int
  ended: bool  # whether the model ended the song (else `seconds` cut it)
  codes: np.ndarray  # int32 [K, frames sampled]: every stream, end of sequence and special tokens


@dataclasses.dataclass(frozen=True)
class _Source:
  weights: str  # the model file, or the adapter's base
  adapter: str  # '' = whole model
  record: model_record.SongModelRecord


def _check_settings(r: Request) -> int:
  """The frames to sample; every setting checked."""
  seconds = errors.check_finite(r.seconds, "--seconds", low=0.0, low_open=True)
  errors.check_finite(r.temperature, "--temperature", low=0.0)
  errors.check_finite(r.cfg_coef, "--cfg_coef")
  errors.check_finite(r.adapter_weight, "--adapter_weight")
  if isinstance(r.top_k, bool) or not isinstance(r.top_k, int) or r.top_k < 1:
    raise GenerateError(f"--top_k {r.top_k!r} must be an integer >= 1")
  frames = int(round(seconds * codec_lib.FRAME_RATE))
  if frames < 1:
    raise GenerateError(f"--seconds {seconds:g} is less than one code frame "
                        f"(1/{codec_lib.FRAME_RATE} s)")
  if sum(bool(x) for x in (r.run, r.adapter, r.model)) != 1:
    raise GenerateError("give exactly one of --run (a train_song output folder), --adapter (a "
                        "PEFT adapter folder) and --model (a model.pt)")
  if r.base and not r.adapter:
    raise GenerateError("--base is the base of --adapter; a whole model (--model, or --run) "
                        "has none")
  if not r.output.endswith(".wav"):
    raise GenerateError(f"--output {r.output} must be a .wav file")
  if os.path.isdir(r.output):
    raise GenerateError(f"--output {r.output} is a folder")
  parent = os.path.dirname(os.path.abspath(r.output))
  while not os.path.exists(parent):  # missing folders are made when the WAV is written
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise GenerateError(f"--output {r.output}: {parent} is a file, not a folder")
  if not r.lyrics.strip():
    raise GenerateError("--lyrics is empty")
  return frames


def _source(r: Request) -> _Source:
  if r.run:
    if not os.path.isdir(r.run):
      raise GenerateError(f"--run {r.run} is not a folder")
    adapter = os.path.join(r.run, "checkpoints", "adapter")
    if os.path.isfile(os.path.join(adapter, peft.CONFIG_NAME)):
      # The run's own base, wherever the folder was moved since (the record holds the old path).
      base = os.path.join(r.run, "base.safetensors")
      return _adapter_source(adapter, base if os.path.isfile(base) else "")
    model = os.path.join(r.run, "checkpoints", "model.pt")
    if os.path.isfile(model):
      return _Source(model, "", model_record.read(os.path.dirname(model), model))
    raise GenerateError(f"--run {r.run} has neither checkpoints/adapter/ nor "
                        "checkpoints/model.pt: has its training finished?")
  if r.adapter:
    return _adapter_source(r.adapter, r.base)
  if not os.path.isfile(r.model):
    raise GenerateError(f"--model {r.model} does not exist")
  return _Source(r.model, "", model_record.read(os.path.dirname(os.path.abspath(r.model)),
                                                r.model))


def _adapter_source(folder: str, base: str) -> _Source:
  if not os.path.isfile(os.path.join(folder, peft.CONFIG_NAME)):
    raise GenerateError(f"--adapter {folder} is not a PEFT adapter folder (no "
                        f"{peft.CONFIG_NAME})")
  record = model_record.read(folder, folder)
  base = base or record.base
  if not base:
    raise GenerateError(f"{folder} was trained over a random base, which was not saved; nothing "
                        "to apply it to")
  if not os.path.isfile(base):
    raise GenerateError(f"base {base} of adapter {folder} does not exist (--base names another)")
  return _Source(base, folder, record)


def _load_weights(path: str, abstract):
  if path.endswith((".pt", ".pth")):
    params = song_lm_weights.load_model_pt(path, abstract)
  elif path.endswith(".safetensors"):
    params = flax_weights.load_params(path, abstract)
  else:
    raise GenerateError(f"{path}: expected the original's model.pt or a Flax .safetensors")
  finite.check_tree(params, path)
  return params


def _codec(r: Request, record: model_record.SongModelRecord, model: song_family.SongConfig):
  codecs = [c for c in record.codecs if c]
  if not codecs:
    raise GenerateError("the training songs record no codec (token files made elsewhere): their "
                        "codes are another tokenizer's, which nothing here decodes")
  if len(set(record.codecs)) > 1:
    raise GenerateError(f"the training songs were tokenized by {len(set(record.codecs))} "
                        f"codecs ({', '.join(c or '(unrecorded)' for c in record.codecs)}): "
                        "their codes mean different sounds")
  path = r.codec or record.codec_path
  if not path:
    raise GenerateError("the codec of the training songs was not found when training; name it "
                        "with --codec")
  codec = codec_lib.load(path)
  if codec_lib.file_id(path) != codecs[0]:
    raise GenerateError(f"codec {path} (id {codec_lib.file_id(path)}) is not the one the "
                        f"training songs were tokenized with (id {codecs[0]})")
  if codec.code_count > model.code_size:
    raise GenerateError(f"codec {path} has {codec.code_count} codes, more than model.code_size "
                        f"{model.code_size}")
  return codec, path


def _text(record: model_record.SongModelRecord):
  if not record.text_tokenizer:
    return song_text.ByteText()
  if not os.path.isfile(record.text_tokenizer):
    raise GenerateError(f"the model's text tokenizer {record.text_tokenizer} does not exist")
  if model_record.file_sha256(record.text_tokenizer) != record.text_tokenizer_sha256:
    raise GenerateError(f"the text tokenizer {record.text_tokenizer} changed since training "
                        "(its sha256 differs)")
  return qwen_text.QwenText(record.text_tokenizer)


def _conditions(r: Request, model: song_family.SongConfig, text, codec) -> tuple[dict, dict]:
  """(conditions, the unconditional rows' conditions), batch 1."""
  try:
    lyrics, sections = text.encode_lyrics(r.lyrics, model.lyrics_len)
  except ValueError as e:
    hint = " (the model's lyrics_len)" if "max_len" in str(e) else ""
    raise GenerateError(f"--lyrics: {e}{hint}") from None
  try:
    style = text.encode_text(r.description, model.style_len)
  except ValueError as e:
    raise GenerateError(f"--description: {e} (the model's style_len)") from None
  null_lyrics, null_sections = text.encode_lyrics("", model.lyrics_len)
  special = model.lm_config("float32").special_token
  one = lambda x: jnp.asarray(np.asarray(x)[None], jnp.int32)
  cond = {"description": (one(lyrics), one(sections)), "type_info": one(style)}
  null = {"description": (one(null_lyrics), one(null_sections)),
          "type_info": one(text.encode_text("", model.style_len))}
  if "prompt_audio" in model.prepend:
    empty = np.full((model.code_depth, model.prompt_len), special, np.int32)
    null["prompt_audio"] = one(empty)
    cond["prompt_audio"] = one(_prompt(r.prompt_audio, model, codec) if r.prompt_audio
                               else empty)
  elif r.prompt_audio:
    raise GenerateError(f"--prompt_audio {r.prompt_audio}: this model has no prompt_audio "
                        f"condition (its conditions: {', '.join(model.prepend)})")
  return ({n: cond[n] for n in model.prepend}, {n: null[n] for n in model.prepend})


def _prompt(path: str, model: song_family.SongConfig, codec) -> np.ndarray:
  wave = wave_file.read(path, codec.sample_rate)
  codes = codec.encode_song(wave, codec.sample_rate)
  if codes.shape[1] < model.prompt_len:
    raise GenerateError(f"--prompt_audio {path} is {len(wave) / codec.sample_rate:.2f} s; the "
                        f"model's prompt is {model.prompt_len} frames "
                        f"({model.prompt_len / codec_lib.FRAME_RATE:g} s)")
  return codes[:, :model.prompt_len]


def load_params(source_weights: str, adapter: str, record, weight: float, abstract):
  """The model to sample: whole, or the adapter merged into its base at `weight`."""
  params = _load_weights(source_weights, abstract)
  if not adapter:
    return params
  imported = peft.import_peft(adapter, params, model_family=song_family.NAME,
                              base_fingerprint=record.base_fingerprint)
  finite.check_tree(imported.adapter.params, adapter)
  lora.check_adapter(params, imported, base_fingerprint=lora.fingerprint(params),
                     model_family=song_family.NAME)
  return lora.merge(params, [imported.adapter], [weight])


def generate(r: Request) -> Song:
  """Sample a song as `r` says and write it to `r.output`."""
  r = dataclasses.replace(r, lyrics=_read_lyrics(r.lyrics))
  frames = _check_settings(r)
  source = _source(r)
  model = source.record.model
  codec, codec_path = _codec(r, source.record, model)
  text = _text(source.record)
  conditions, null = _conditions(r, model, text, codec)
  config = model.lm_config("float32")
  params = load_params(source.weights, source.adapter, source.record, r.adapter_weight,
                       song_lm.abstract_params(config))
  logging.info("sampling up to %d frames (%.1f s) from %s%s, codec %s", frames,
               frames / codec_lib.FRAME_RATE, source.weights,
               f" + {source.adapter}" if source.adapter else "", codec_path)
  codes = np.asarray(song_sample.sample_cached(
      params, config, conditions, null, frames=frames, delays=model.delays,
      key=jax.random.key(r.seed), top_k=r.top_k, temperature=r.temperature,
      cfg_coef=r.cfg_coef))[0]
  mixed = codes[0]
  ended = mixed >= config.eos_token
  n = int(np.argmax(ended)) if ended.any() else len(mixed)
  if n == 0:
    raise GenerateError(f"the model ended the song before its first frame (seed {r.seed}); "
                        "try another --seed or --temperature")
  wave = codec.decode(mixed[:n], codec_lib.STREAMS[0])
  wave_file.write(r.output, wave, codec.sample_rate)
  logging.info("wrote %s: %d frames, %.2f s at %d Hz%s", r.output, n, len(wave) / codec.sample_rate,
               codec.sample_rate, " (the model ended the song)" if ended.any() else "")
  return Song(r.output, n, codec.sample_rate, bool(ended.any()), codes)


def _read_lyrics(value: str) -> str:
  """--lyrics: the text, or @path for a file's text."""
  if not value.startswith("@"):
    return value
  path = value[1:]
  try:
    with open(path, encoding="utf-8") as f:
      return f.read()
  except FileNotFoundError:
    raise GenerateError(f"--lyrics file {path} does not exist") from None
  except UnicodeDecodeError:
    raise GenerateError(f"--lyrics file {path} is not UTF-8 text") from None

