"""`launch/train_song.py`: the fork's train_config.yaml, run on the shared loop.

Steps, in order, each checked before anything later is written: read the YAML over
configs/song_lm.py; turn the prepared folder into windows (`output_dir/data/{train,val}.npz`);
convert the base's `model.pt` once (`output_dir/base.safetensors`); train in `output_dir` (a
second run resumes; TensorBoard in `output_dir/tensorboard`); export what the seed promises in
`output_dir/checkpoints/`: for LoRA only the adapter, as PEFT writes it for the original model
(`adapter_model.safetensors`, `adapter_config.json`), for full fine-tuning a `model.pt` the
original loads.
"""

import dataclasses
import os

from absl import logging
import ml_collections

from lora_jax import lora
from lora_jax.families import song_lm as song_family
from lora_jax.interop import flax_weights, peft, song_lm_weights
from lora_jax.models.song import lm as song_lm
from lora_jax.song import prepare, yaml_config
from lora_jax.train import config as config_lib
from lora_jax.train import loop


@dataclasses.dataclass(frozen=True)
class SongResult:
  result: loop.Result
  export: str  # the folder or file written in checkpoints/; '' unless the run finished


def _base(run: yaml_config.SongRun, abstract) -> str:
  if not run.base_model_path:
    logging.warning("paths.base_model_path is empty: training starts from a random base")
    return ""
  source = os.path.join(run.base_model_path, "model.pt")
  if not os.path.isfile(source):
    raise prepare.SongDataError(f"{source} does not exist: paths.base_model_path is the folder "
                                "of the original's model.pt")
  target = os.path.join(run.output_dir, "base.safetensors")
  if not os.path.exists(target):
    song_lm_weights.convert(source, target, abstract)
    logging.info("converted %s -> %s", source, target)
  return target


def run(yaml_path: str, base_config: ml_collections.ConfigDict) -> SongResult:
  """Prepare, train (or resume) and export as the YAML says."""
  song_run = yaml_config.read(yaml_path, base_config)
  config = song_run.config
  model = config_lib.from_mapping(song_family.SongConfig, config.model, "config.model")
  check = config.copy_and_resolve_references()  # every setting checked before anything is written
  check.data.path = check.data.val_path = os.path.join(song_run.output_dir, "data", "train.npz")
  config_lib.from_config_dict(check)
  abstract = song_lm.abstract_params(model.lm_config("float32"))
  data = prepare.prepare(song_run.prepared_data_dir, model,
                         os.path.join(song_run.output_dir, "data"),
                         val_fraction=song_run.val_fraction, overlap=song_run.window_overlap,
                         text_tokenizer=song_run.text_tokenizer)
  for problem in data.problems:
    logging.warning("dropped %s", problem)
  logging.info("%d songs: %d training and %d validation windows (%d rows dropped)", data.songs,
               data.n_train, data.n_val, len(data.problems))
  steps, every = yaml_config.steps_for(song_run, data.n_train)
  config.training.steps = steps
  config.training.eval_every = every
  config.ckpt.every_steps = every
  config.data.path, config.data.val_path = data.train_path, data.val_path
  config.training.base_params = _base(song_run, abstract)
  result = loop.train(config_lib.from_config_dict(config), song_run.output_dir)
  if not result.export_path:
    return SongResult(result, "")
  out = os.path.join(song_run.output_dir, "checkpoints")
  if config.training.type == "lora" and not config.training.relora_every:
    export = os.path.join(out, "adapter")
    peft.export_peft(lora.load_adapter(result.export_path), export)
  else:  # the whole model (full fine-tuning, or ReLoRA's merged one)
    export = os.path.join(out, "model.pt")
    song_lm_weights.save_model_pt(flax_weights.load_params(result.export_path, abstract), export)
  logging.info("exported %s", export)
  return SongResult(result, export)
