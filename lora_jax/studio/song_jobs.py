"""A song job: the song model's LoRA on a song dataset's clips, by the song section's own code.

The job's folder `<root>/jobs/<id>/` holds what a user of the SongGeneration fork writes by hand:
`metadata.jsonl` (a line per clip: its blob, lyrics, description, and an idx made of its position
and name) and `train_config.yaml` (paths into the folder, the base's model sizes and codec, the
request's hyperparameters); `base/model.pt` links to the studio's song base. The worker runs
`launch/prepare_and_train_song.py` on that YAML: prepare_song_data's code (clips to token files,
with the base's codec or one fitted on the clips), then train_song's (LoRA on the shared loop,
`run/status.json` and `run/metrics.csv` as every job), in one process. SIGTERM stops either step;
resume reruns both (prepared songs are skipped, training continues from its checkpoint).

Everything a job would refuse is checked when it is made, naming the clip: lyrics missing or
too long for the base, an unknown section tag, a description too long, a split with no
validation song. The finished adapter is train_song's PEFT folder (`run/checkpoints/adapter/`),
kept as one zip with the codec that tokenized its songs (`adapter_zip`): what generation needs.
"""

import dataclasses
import json
import os
import re
import sys
import zipfile

import yaml

from lora_jax import atomic
from lora_jax.data.song import qwen_text
from lora_jax.data.song import text as song_text
from lora_jax.song import prepare as song_prepare
from lora_jax.song import prepare_audio
from lora_jax.song import yaml_config
from lora_jax.studio import datasets, song_datasets
from lora_jax.studio import db as db_lib
from lora_jax.studio.song_base import SongBase

LAUNCHER = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "launch", "prepare_and_train_song.py")
VAL_FRACTION = 0.2  # songs, split by a hash of their idx (lora_jax/song/prepare.py)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]  # the fork's
ZIP_TIME = (2020, 1, 1, 0, 0, 0)  # fixed: the same adapter zips to the same bytes


class SongJobError(ValueError):
  """A song training request that cannot become a job."""


def no_base_message() -> str:
  return ("no song base is configured: start the studio with --song_base=PATH (a SongGeneration "
          "model.pt, a merged or fully fine-tuned train_song model, or its folder); the song "
          "model's LoRA trains over it")


def run_dir(output_dir: str) -> str:
  return os.path.join(output_dir, "run")


def adapter_dir(output_dir: str) -> str:
  """train_song's PEFT folder (with its song_model.json) once the job finished."""
  return os.path.join(run_dir(output_dir), "checkpoints", "adapter")


def _idx(i: int, name: str) -> str:
  return f"{i:03d}_{re.sub(r'[^A-Za-z0-9_-]', '_', os.path.splitext(name)[0])}"[:100]


def _clips(database: db_lib.Database, store, dataset: dict, base: SongBase) -> list[dict]:
  """The metadata.jsonl rows of the dataset's clips, each checked as the job would read it."""
  clips = [f for f in dataset["files"] if f["kind"] == "audio"]
  if not clips:
    raise SongJobError(f"dataset {dataset['id']} holds no audio clips")
  text = (qwen_text.QwenText(base.text_tokenizer) if base.text_tokenizer
          else song_text.ByteText())
  rows = []
  for i, clip in enumerate(sorted(clips, key=lambda f: f["name"])):
    lyrics = clip["meta"].get("lyrics", "")
    where = f"clip {clip['name']} (file {clip['id']})"
    if not lyrics.strip():
      raise SongJobError(f"{where} has no lyrics: fill in its Lyrics (section tags such as "
                         f"[verse] and [chorus] mark its parts)")
    style = song_datasets.description(clip["meta"])
    try:
      text.encode_lyrics(lyrics, base.model.lyrics_len)
    except ValueError as e:
      raise SongJobError(f"{where}: {e} (the base's lyrics_len)") from None
    try:
      text.encode_text(style, base.model.style_len)
    except ValueError as e:
      raise SongJobError(f"{where}: its description {e} (the base's style_len)") from None
    rows.append({"path": store.blob_path(clip["sha256"]), "gt_lyric": lyrics,
                 "descriptions": style, "idx": _idx(i, clip["name"])})
  return rows


def _check_split(rows: list[dict], val_fraction: float, dataset_id: str) -> None:
  # The split train_song's reader makes, known before it runs.
  is_val = song_prepare.is_validation
  n_val = sum(is_val(r["idx"], val_fraction) for r in rows)
  if n_val == 0 or n_val == len(rows):
    raise SongJobError(f"dataset {dataset_id}'s {len(rows)} clips split into {len(rows) - n_val} "
                       f"training and {n_val} validation songs at val_fraction {val_fraction}; "
                       f"both need one: add clips or change val_fraction")


def _config(base: SongBase, output_dir: str, params: dict) -> dict:
  """The fork's train_config.yaml for this job."""
  model = {k: list(v) if isinstance(v, tuple) else v
           for k, v in dataclasses.asdict(base.model).items() if k in yaml_config.SECTIONS["model"]}
  paths = {"base_model_path": os.path.join(output_dir, "base"),
           "metadata_path": os.path.join(output_dir, "metadata.jsonl"),
           "prepared_data_dir": os.path.join(output_dir, "prepared"),
           "output_dir": run_dir(output_dir)}
  data = {"val_fraction": params["val_fraction"] or VAL_FRACTION, "num_workers": 0}
  if base.codec_path:  # the base's codec: its clips' codes mean what the base learned
    paths["audio_tokenizer_path"] = base.codec_path
    data.update(sample_rate=base.sample_rate, n_mels=base.n_mels, separator=base.separator)
  if base.text_tokenizer:
    paths["text_tokenizer"] = base.text_tokenizer
  training = {"type": "lora", "validation_batch_size": 1, "save_interval": 1,
              "gradient_accumulation_steps": 1, "use_fp16": False, "seed": 0}
  for key, yaml_key in (("epochs", "epochs"), ("batch_size", "batch_size"),
                        ("learning_rate", "learning_rate"), ("log_every", "log_interval"),
                        ("warmup_steps", "warmup_steps")):
    if params[key] is not None:
      training[yaml_key] = params[key]
  lora = {"dropout": 0.0, "target_modules": TARGETS}
  if params["rank"] is not None:
    lora["r"] = params["rank"]
  if params["alpha"] is not None:
    lora["alpha"] = params["alpha"]
  return {"paths": paths, "data": data, "training": training, "lora": lora, "model": model}


def create(database: db_lib.Database, store, base: SongBase | None, name: str, dataset_id: str,
           params: dict) -> str:
  """Check a song training request, write its folder and queue it; the job's id."""
  if base is None:
    raise SongJobError(no_base_message())
  dataset = datasets.ready(database, dataset_id, "song", SongJobError)
  rows = _clips(database, store, dataset, base)
  _check_split(rows, params["val_fraction"] or VAL_FRACTION, dataset_id)
  job_id = db_lib.new_id()
  output_dir = store.folder("jobs", job_id)
  config = _config(base, output_dir, params)
  os.makedirs(os.path.join(output_dir, "base"))
  os.symlink(base.model_pt, os.path.join(output_dir, "base", "model.pt"))
  atomic.write_text(config["paths"]["metadata_path"],
                    "".join(json.dumps(r) + "\n" for r in rows))
  yaml_path = os.path.join(output_dir, "train_config.yaml")
  atomic.write_text(yaml_path, yaml.safe_dump(config, sort_keys=False))
  argv = [sys.executable, LAUNCHER, f"--config={yaml_path}"]
  database.execute(
      "INSERT INTO jobs (id, name, level, dataset_id, parent_adapter_id, params, argv, "
      "output_dir, state, message, created) VALUES (?, ?, 'song', ?, NULL, ?, ?, ?, 'queued', "
      "'', ?)", (job_id, name, dataset_id, json.dumps(params), json.dumps(argv),
                 os.path.relpath(output_dir, store.root), db_lib.now()))
  return job_id


def prepare_and_train(yaml_path: str, defaults) -> int:
  """The job's process: prepare the clips, then train; the exit status (75 when stopped)."""
  from lora_jax.song import command  # pylint: disable=g-import-not-at-top; JAX, in the job only
  from lora_jax.train import exit_status  # pylint: disable=g-import-not-at-top
  prepare_audio.run(yaml_path, defaults)
  return exit_status.of(command.run(yaml_path, defaults).result.status)


def adapter_zip(output_dir: str) -> str:
  """The finished job's PEFT folder and its codec as one zip beside them (written once,
  atomically, with fixed timestamps); its path."""
  with open(os.path.join(output_dir, "train_config.yaml"), encoding="utf-8") as f:
    config = yaml.safe_load(f)
  adapter = adapter_dir(output_dir)
  codec = (config["paths"].get("audio_tokenizer_path") or
           os.path.join(config["paths"]["prepared_data_dir"], prepare_audio.CODEC_FILE))
  members = [(name, os.path.join(adapter, name)) for name in sorted(os.listdir(adapter))]
  members.append((prepare_audio.CODEC_FILE, codec))
  path = os.path.join(output_dir, "adapter.zip")
  with atomic.atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
    for name, source in members:
      with open(source, "rb") as f:
        z.writestr(zipfile.ZipInfo(f"adapter/{name}", ZIP_TIME), f.read(),
                   zipfile.ZIP_DEFLATED)
  return path
