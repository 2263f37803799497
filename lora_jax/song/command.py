"""`launch/train_song.py`: the fork's train_config.yaml, run on the shared loop.

Steps, in order. Nothing is written until every check passed: the YAML over configs/song_lm.py;
the prepared folder's windows, built in memory and checked against the batch sizes as the loop
would (`loop.check_data`); the LoRA targets against the model; the base's `model.pt`, read
strictly. Then the windows are written (`output_dir/data/{train,val}.npz`), the base converted
once (`output_dir/base.safetensors`), and the loop trains in `output_dir` (a second run resumes;
TensorBoard in `output_dir/logs`, where the seed's `tensorboard --logdir training_output/logs`
looks). At the end it exports what the seed promises in
`output_dir/checkpoints/`: for LoRA only the adapter, as PEFT writes it for the original model
(`adapter_model.safetensors`, `adapter_config.json`), for full fine-tuning a `model.pt` the
original loads; beside either, `song_model.json` (model_record.py) for `launch/generate_song.py`.
"""

import dataclasses
import os

from absl import logging
import ml_collections

from lora_jax import lora
from lora_jax.data.song import qwen_text
from lora_jax.data.song import text as song_text
from lora_jax.families import song_lm as song_family
from lora_jax.interop import flax_weights, peft, song_lm_weights
from lora_jax.models.song import lm as song_lm
from lora_jax.song import model_record, prepare, prepare_audio, yaml_config
from lora_jax.train import config as config_lib
from lora_jax.train import loop


@dataclasses.dataclass(frozen=True)
class SongResult:
  result: loop.Result
  export: str  # the folder or file written in checkpoints/; '' unless the run finished


def _read_base(run: yaml_config.SongRun, abstract):
  """(the base's params or None, its Flax file in output_dir); '' without a base."""
  if not run.base_model_path:
    logging.warning("paths.base_model_path is empty: training starts from a random base")
    return None, ""
  source = os.path.join(run.base_model_path, "model.pt")
  if not os.path.isfile(source):
    raise prepare.SongDataError(f"{source} does not exist: paths.base_model_path is the folder "
                                "of the original's model.pt")
  target = os.path.join(run.output_dir, "base.safetensors")
  if os.path.exists(target):  # converted by an earlier run of this output_dir
    return None, target
  return song_lm_weights.load_model_pt(source, abstract), target


def _record(run: yaml_config.SongRun, config, model, data: prepare.Collected, base: str,
            fingerprint: str) -> model_record.SongModelRecord:
  codec = run.codec_path or os.path.join(run.prepared_data_dir, prepare_audio.CODEC_FILE)
  tokenizer = os.path.abspath(run.text_tokenizer) if run.text_tokenizer else ""
  return model_record.SongModelRecord(
      model, config.training.type, data.codecs,
      os.path.abspath(codec) if os.path.isfile(codec) else "", tokenizer,
      model_record.file_sha256(tokenizer) if tokenizer else "",
      os.path.abspath(base) if base else "", fingerprint)


def run(yaml_path: str, base_config: ml_collections.ConfigDict) -> SongResult:
  """Prepare, train (or resume) and export as the YAML says."""
  song_run = yaml_config.read(yaml_path, base_config)
  config = song_run.config
  # A dropped text (condition dropout) is the tokenizer's start token alone, padded with its pad.
  text = (qwen_text.QwenText(song_run.text_tokenizer) if song_run.text_tokenizer
          else song_text.ByteText())
  config.model.text_start_id, config.model.text_pad_id = text.start, text.pad
  model = config_lib.from_mapping(song_family.SongConfig, config.model, "config.model")
  data_dir = os.path.join(song_run.output_dir, "data")
  check = config.copy_and_resolve_references()  # every setting checked before anything is written
  check.data.path = check.data.val_path = os.path.join(data_dir, "train.npz")
  config_lib.from_config_dict(check)
  abstract = song_lm.abstract_params(model.lm_config("float32"))
  data = prepare.collect(song_run.prepared_data_dir, model, val_fraction=song_run.val_fraction,
                         overlap=song_run.window_overlap, text_tokenizer=song_run.text_tokenizer)
  for problem in data.problems:
    logging.warning("dropped %s", problem)
  n_train, n_val = len(data.train["length"]), len(data.val["length"])
  logging.info("%d songs: %d training and %d validation windows (%d rows dropped)", data.songs,
               n_train, n_val, len(data.problems))
  steps, every = yaml_config.steps_for(song_run, n_train)
  config.training.steps = steps
  config.training.eval_every = every
  config.ckpt.every_steps = every
  config.data.path = os.path.join(data_dir, "train.npz")
  config.data.val_path = os.path.join(data_dir, "val.npz")
  base_params, base_path = _read_base(song_run, abstract)
  config.training.base_params = base_path
  train_config = config_lib.from_config_dict(config)
  loop.check_data(train_config, data.train, data.val)
  if config.training.type == "lora":
    lora.resolve(train_config.lora, abstract)

  prepare.write(data, data_dir)
  if base_params is not None:
    flax_weights.save_params(base_params, base_path)
    logging.info("converted %s -> %s", os.path.join(song_run.base_model_path, "model.pt"),
                 base_path)
  result = loop.train(train_config, song_run.output_dir, tensorboard="logs")
  if not result.export_path:
    return SongResult(result, "")
  out = os.path.join(song_run.output_dir, "checkpoints")
  if config.training.type == "lora" and not config.training.relora_every:
    record = lora.load_adapter(result.export_path)
    export = os.path.join(out, "adapter")
    peft.export_peft(record, export)
    folder, fingerprint = export, record.base_fingerprint
  else:  # the whole model (full fine-tuning, or ReLoRA's merged one)
    export = os.path.join(out, "model.pt")
    song_lm_weights.save_model_pt(flax_weights.load_params(result.export_path, abstract), export)
    folder, fingerprint = out, ""
  model_record.write(folder, _record(song_run, config, model, data, base_path, fingerprint))
  logging.info("exported %s", export)
  return SongResult(result, export)
