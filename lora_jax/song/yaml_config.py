"""The SongGeneration fork's `train_config.yaml` as a song_lm training config.

The fork's sections and keys are what its users have (`paths`, `data`, `training`, `lora`,
`model`); each maps onto a field of `configs/song_lm.py`. Unknown keys are errors naming them, so
a misspelt setting never silently keeps its default. Where the fork is wrong the mapping is not:
its scheduler counted micro-batches, ignoring gradient accumulation, while here
`training.epochs` becomes optimiser steps over the prepared windows (`steps_for`).

`paths.text_tokenizer` (not in the fork, whose tokenizer path sits in the base's config.yaml) is
the Qwen2 tokenizer.json the lyrics and descriptions are tokenized with; without it the offline
byte-level tokenizer is used, which suits a base trained here, not a released checkpoint.

`data.separator` (the vocal/accompaniment split, `lora_jax/song/separate.py`; default `mask`, the
project's trained separator, where its weights are present, else `hpss`) and
`data.n_mels` (the default audio codec's mel bands; default 80) are ours, read by
`launch/prepare_song_data.py` (`read_prepare`) with `data.sample_rate` (default 24000 here) and
`paths.audio_tokenizer_path` (our codec's .safetensors file, not the original's folder).

Condition dropout (classifier-free guidance needs rows trained without conditions) is not in the
fork's YAML: the fork takes it from the base's config.yaml, so these two sections have that
file's names and nesting, `classifier_free_guidance: {training_dropout: 0.15}` and
`attribute_dropout: {text: {description: 0.0, type_info: 0.5}, audio: {prompt_audio: 0.0}}`
(the released base's values, also the defaults; `lora_jax/families/song_lm.py` applies them).

`model` may also set any field of `lora_jax.families.song_lm.SongConfig` (`num_layers_sub`,
`text_vocab_size`, `frames`, ...), which the fork takes from the base model's own config.yaml.
`use_flash_attn_2` is accepted and has no effect: the attention implementation is chosen per
backend (`lora_jax/models/attention_dispatch.py`).
"""

import dataclasses
import math

import ml_collections
import yaml

from lora_jax import errors
from lora_jax.families import song_lm as song_family
from lora_jax.song import separate

# SongConfig fields the YAML sets elsewhere (dropout) or train_song sets (the tokenizer's ids).
_NOT_IN_MODEL = ("cfg_dropout", "description_dropout", "type_info_dropout",
                 "prompt_audio_dropout", "text_start_id", "text_pad_id")

SECTIONS = {
    "paths": ("base_model_path", "audio_tokenizer_path", "separate_audio_tokenizer_path",
              "raw_data_dir", "metadata_path", "prepared_data_dir", "output_dir",
              "text_tokenizer"),
    "data": ("sample_rate", "max_duration_secs", "num_workers", "val_fraction",
             "window_overlap", "separator", "n_mels"),
    "training": ("type", "epochs", "batch_size", "validation_batch_size", "learning_rate",
                 "weight_decay", "adam_beta1", "adam_beta2", "warmup_steps", "log_interval",
                 "save_interval", "gradient_accumulation_steps", "use_fp16", "seed"),
    "lora": ("r", "alpha", "dropout", "target_modules"),
    "model": tuple(f.name for f in dataclasses.fields(song_family.SongConfig)
                   if f.name not in _NOT_IN_MODEL) + ("use_flash_attn_2",),
    "classifier_free_guidance": ("training_dropout",),
    "attribute_dropout": ("text", "audio"),
}
# attribute_dropout's keys: {condition type: {condition: its SongConfig dropout field}}.
ATTRIBUTES = {"text": {"description": "description_dropout", "type_info": "type_info_dropout"},
              "audio": {"prompt_audio": "prompt_audio_dropout"}}


class SongYamlError(errors.UserError):
  """A train_config.yaml that cannot become a training config."""


@dataclasses.dataclass(frozen=True)
class SongRun:
  """What the YAML asks for: the training config (steps still 0) and the run's folders."""

  config: ml_collections.ConfigDict
  base_model_path: str  # folder with the original's model.pt; '' = a random base (smoke runs)
  prepared_data_dir: str  # manifest.jsonl and {idx}.pt token files (the fork's prepare_data.py)
  output_dir: str
  epochs: int
  save_interval: int  # epochs between checkpoints
  val_fraction: float
  window_overlap: int  # frames shared by consecutive windows of a song
  text_tokenizer: str  # a Qwen2 tokenizer.json; '' = the byte-level default
  codec_path: str  # paths.audio_tokenizer_path (our codec file); '' = the prepared folder's


def _load(path: str) -> dict:
  """The YAML's sections, every section and key checked against SECTIONS."""
  try:
    with open(path, encoding="utf-8") as f:
      raw = yaml.safe_load(f)
  except OSError as e:
    raise SongYamlError(f"cannot read {path}: {e.strerror}") from None
  except yaml.YAMLError as e:
    raise SongYamlError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
  if not isinstance(raw, dict):
    raise SongYamlError(f"{path} must hold sections {', '.join(SECTIONS)}, got "
                        f"{type(raw).__name__}")
  for section, value in raw.items():
    if section not in SECTIONS:
      raise SongYamlError(f"{path}: unknown section {section!r}; sections are "
                          f"{', '.join(SECTIONS)}")
    if not isinstance(value, dict):
      raise SongYamlError(f"{path}: section {section!r} must be a mapping, got "
                          f"{type(value).__name__}")
    unknown = sorted(set(value) - set(SECTIONS[section]))
    if unknown:
      raise SongYamlError(f"{path}: unknown key {section}.{unknown[0]}; {section} keys are "
                          f"{', '.join(SECTIONS[section])}")
  return raw


def read(path: str, base: ml_collections.ConfigDict) -> SongRun:
  """Parse and check `path` over `base` (configs/song_lm.py's config, which declares every field
  the YAML does not set); relative paths inside it are relative to the working directory, as in
  the fork."""
  raw = _load(path)
  get = lambda section, key, default: raw.get(section, {}).get(key, default)
  paths = raw.get("paths", {})
  for key in ("prepared_data_dir", "output_dir"):
    if not isinstance(paths.get(key), str) or not paths[key]:
      raise SongYamlError(f"{path}: paths.{key} must be set")

  config = base.copy_and_resolve_references()
  training = raw.get("training", {})
  kind = get("training", "type", "lora")
  if kind not in ("lora", "full"):
    raise SongYamlError(f"{path}: training.type must be 'lora' or 'full', got {kind!r}")
  try:
    config.training.type = kind
    config.name = f"song_lm_{kind}"
    accum = int(get("training", "gradient_accumulation_steps", 1))
    micro = int(get("training", "batch_size", 4))
    # The fork's batch_size is one micro-batch; an optimiser step here takes all of them.
    config.data.batch_size = micro * accum
    config.opt.grad_accum_steps = accum
    config.data.eval_batch_size = int(get("training", "validation_batch_size", micro))
    config.opt.learning_rate = float(get("training", "learning_rate", 1e-5))
    config.opt.weight_decay = float(get("training", "weight_decay", 0.1))
    config.opt.b1 = float(get("training", "adam_beta1", 0.9))
    config.opt.b2 = float(get("training", "adam_beta2", 0.95))
    config.opt.warmup_steps = int(get("training", "warmup_steps", 100))
    config.training.log_every = int(get("training", "log_interval", 10))
    config.training.precision = "float16" if get("training", "use_fp16", False) else "float32"
    config.training.seed = int(get("training", "seed", 42))
    lora = raw.get("lora", {})
    config.lora.rank = int(lora.get("r", config.lora.rank))
    config.lora.alpha = float(lora.get("alpha", config.lora.alpha))
    config.lora.dropout = float(lora.get("dropout", config.lora.dropout))
    if "target_modules" in lora:
      config.lora.target_modules = tuple(str(t) for t in lora["target_modules"])
    _dropout(path, raw, config)
    for key, value in raw.get("model", {}).items():
      if key != "use_flash_attn_2":
        setattr(config.model, key, tuple(value) if isinstance(value, list) else value)
  except (TypeError, ValueError) as e:
    raise SongYamlError(f"{path}: {e}") from None
  epochs = int(get("training", "epochs", 10))
  save_interval = int(get("training", "save_interval", 1))
  val_fraction = float(get("data", "val_fraction", 0.1))
  overlap = int(get("data", "window_overlap", max(config.model.delays)))
  if epochs < 1 or save_interval < 1:
    raise SongYamlError(f"{path}: training.epochs ({epochs}) and training.save_interval "
                        f"({save_interval}) must be >= 1")
  if not (0.0 < val_fraction < 1.0) or not math.isfinite(val_fraction):
    raise SongYamlError(f"{path}: data.val_fraction must be in (0, 1), got {val_fraction}")
  return SongRun(config, paths.get("base_model_path") or "", paths["prepared_data_dir"],
                 paths["output_dir"], epochs, save_interval, val_fraction, overlap,
                 paths.get("text_tokenizer") or "", paths.get("audio_tokenizer_path") or "")


def _dropout(path: str, raw: dict, config: ml_collections.ConfigDict) -> None:
  """The condition dropout sections onto config.model, each probability checked."""
  values = {}
  if "training_dropout" in raw.get("classifier_free_guidance", {}):
    values["cfg_dropout"] = ("classifier_free_guidance.training_dropout",
                             raw["classifier_free_guidance"]["training_dropout"])
  for kind, conditions in raw.get("attribute_dropout", {}).items():
    if not isinstance(conditions, dict):
      raise SongYamlError(f"{path}: attribute_dropout.{kind} must be a mapping of conditions to "
                          f"probabilities, got {type(conditions).__name__}")
    for name, p in conditions.items():
      if name not in ATTRIBUTES[kind]:
        raise SongYamlError(f"{path}: unknown key attribute_dropout.{kind}.{name}; "
                            f"attribute_dropout.{kind} keys are {', '.join(ATTRIBUTES[kind])}")
      values[ATTRIBUTES[kind][name]] = (f"attribute_dropout.{kind}.{name}", p)
  for field, (where, p) in values.items():
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
      raise SongYamlError(f"{path}: {where} must be a probability in [0, 1], got {p!r}")
    setattr(config.model, field, float(p))


def steps_for(run: SongRun, n_train_windows: int) -> tuple[int, int]:
  """(optimiser steps, steps between checkpoints): whole epochs of optimiser steps, each step
  taking `data.batch_size` windows (every micro-batch of the accumulation)."""
  per_epoch = max(1, n_train_windows // run.config.data.batch_size)
  return per_epoch * run.epochs, per_epoch * run.save_interval


@dataclasses.dataclass(frozen=True)
class PrepareRun:
  """What the YAML asks of `launch/prepare_song_data.py`."""

  metadata_path: str  # metadata.jsonl: path, gt_lyric, descriptions, idx per line
  raw_data_dir: str  # where relative audio paths are also looked for; '' = none
  prepared_data_dir: str
  codec_path: str  # paths.audio_tokenizer_path: a codec .safetensors; '' = in prepared_data_dir
  sample_rate: int
  n_mels: int
  separator: str
  code_size: int  # model.code_size: codes per stream stay below it
  num_workers: int  # analysis processes; 0 or 1 = in this process


def read_prepare(path: str, base: ml_collections.ConfigDict) -> PrepareRun:
  """The preparation settings of `path` (the same file training reads), checked."""
  raw = _load(path)
  paths, data = raw.get("paths", {}), raw.get("data", {})
  for key in ("metadata_path", "prepared_data_dir"):
    if not isinstance(paths.get(key), str) or not paths[key]:
      raise SongYamlError(f"{path}: paths.{key} must be set")
  try:
    code_size = int(raw.get("model", {}).get("code_size", base.model.code_size))
    sample_rate = int(data.get("sample_rate", 24000))
    n_mels = int(data.get("n_mels", 80))
    num_workers = int(data.get("num_workers", 0))
  except (TypeError, ValueError) as e:
    raise SongYamlError(f"{path}: {e}") from None
  if n_mels < 8:
    raise SongYamlError(f"{path}: data.n_mels must be >= 8, got {n_mels}")
  return PrepareRun(paths["metadata_path"], paths.get("raw_data_dir") or "",
                    paths["prepared_data_dir"], paths.get("audio_tokenizer_path") or "",
                    sample_rate, n_mels, str(data.get("separator", separate.default_name())), code_size,
                    num_workers)
