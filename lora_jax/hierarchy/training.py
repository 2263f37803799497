"""Train the base, a genre's parent adapter, and a sub-style's child adapter over the parent.

Each function turns the hierarchy's settings into a music_lm `TrainConfig`, turns the pack's
train and validation splits into cached windows (`windows.split_windows`), runs the one shared
loop (`lora_jax.train.loop.train`) in `run/` beside the result, and writes the result where the
seed puts it (`layout`). Rerunning with the same folders resumes; a run stopped by a signal
returns status 'stopped' and writes no result. In a multi-process run every process trains and
process 0 alone writes the results.

Levels:
  base    full training of a fresh MusicTransformer on several packs' train splits.
  parent  a LoRA adapter over the frozen base on the genre's whole pack (all its sub-styles).
  child   a LoRA adapter over the frozen base and the frozen parent (applied at weight 1), on the
          sub-style's pack. Its `.lora` records the parent (name, path, fingerprint of its
          factors, base fingerprint); a parent trained on another base is refused.
While adapters train, the base runs with its dropout off: the adapter's own input dropout is the
regulariser.
"""

import dataclasses
import os
from typing import Sequence

import jax
from absl import logging

from lora_jax import lora
from lora_jax.data import midi_tokenizer
from lora_jax.data.style_packs import pack as style_pack
from lora_jax.families import music_lm
from lora_jax.hierarchy import base_file, layout, settings, windows
from lora_jax.train import config as train_config
from lora_jax.train import loop


@dataclasses.dataclass(frozen=True)
class Trained:
  """How a level's training ended and what it wrote."""

  status: str  # the loop's: 'finished', 'early_stopped' or 'stopped'
  path: str  # the model or .lora file; '' when stopped
  run_dir: str
  steps: int
  best_val_loss: float | None  # nats per token on the validation windows


def _train_config(name: str, model: music_lm.LmConfig, spec: lora.LoraSpec,
                  stage: settings.StageSettings, opt: settings.OptSettings,
                  run: settings.RunSettings, train: windows.Windows, val: windows.Windows, *,
                  full: bool, base_params: str, parent_adapter: str) -> train_config.TrainConfig:
  steps_per_epoch = train.n_windows // stage.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"the train split of {', '.join(train.styles)} has {train.n_windows} windows "
                     f"of {model.seq_len} tokens, fewer than one batch of {stage.batch_size}")
  devices = jax.device_count()
  eval_batch = min(stage.batch_size, val.n_windows - val.n_windows % devices)
  if eval_batch < 1:
    raise ValueError(f"the validation split of {', '.join(val.styles)} has {val.n_windows} "
                     f"windows, fewer than the {devices} devices that share an eval batch")
  steps = stage.epochs * steps_per_epoch
  if steps > train_config.MAX_STEPS:
    raise ValueError(f"epochs {stage.epochs} of {steps_per_epoch} steps make {steps} steps, more "
                     f"than the step counter holds ({train_config.MAX_STEPS})")
  return train_config.TrainConfig(
      family=music_lm.NAME,
      name=name,
      model=model,
      lora=spec,
      opt=train_config.OptConfig(
          learning_rate=stage.learning_rate, warmup_steps=int(round(stage.warmup_fraction * steps)),
          decay=opt.decay, final_lr_fraction=opt.final_lr_fraction,
          inv_gamma=1.0, inv_power=1.0, inv_warmup=0.0, ema_beta=0.0, ema_power=0.75,
          weight_decay=stage.weight_decay, b1=opt.b1, b2=opt.b2, eps=opt.eps,
          clip_norm=opt.clip_norm, grad_accum_steps=1, lr_groups=()),
      data=train_config.DataConfig(
          path=train.path, val_path=val.path, val_fraction=0.0, synthetic_examples=0,
          batch_size=stage.batch_size, eval_batch_size=eval_batch),
      ckpt=train_config.CkptConfig(every_steps=stage.ckpt_every or steps, keep_last=run.keep_last,
                                   keep_best=1),
      mesh=train_config.MeshConfig(data=-1, fsdp=1, model=1),
      training=train_config.TrainingConfig(
          type="full" if full else "lora", steps=steps, seed=stage.seed, precision="float32",
          base_dtype="float32", base_params=base_params, parent_adapter=parent_adapter,
          quantize="",
          eval_every=stage.eval_every or steps, patience=0, log_every=run.log_every,
          max_nonfinite_in_a_row=run.max_nonfinite_in_a_row,
          allow_changed_config=run.allow_changed_config))


def _log_data(level: str, train: windows.Windows, val: windows.Windows) -> None:
  logging.info("%s data: %s train %d pieces, %d windows, %d tokens; validation %d pieces, %d "
               "windows", level, "+".join(train.styles), train.n_pieces, train.n_windows,
               train.n_tokens, val.n_pieces, val.n_windows)


def train_base(config: settings.BaseConfig, pack_dirs: Sequence[str], output_dir: str) -> Trained:
  """Full training of the base on the packs' train splits; writes base_model.safetensors."""
  tokenizer = midi_tokenizer.MidiTokenizer(midi_tokenizer.MidiTokenizerConfig())
  if config.model.vocab_size != tokenizer.vocab_size:
    raise ValueError(f"model.vocab_size {config.model.vocab_size} differs from the tokenizer's "
                     f"{tokenizer.vocab_size} tokens")
  split = lambda name, aug=None: windows.split_windows(
      pack_dirs, name, tokenizer, config.data.seq_len, config.data.cache_dir, aug)
  # Validation windows are concatenated like the train windows, never augmented.
  train = split("train", config.augment)
  val = split("validation", dataclasses.replace(config.augment, copies=0))
  _log_data("base", train, val)
  model = music_lm.LmConfig(**dataclasses.asdict(config.model), seq_len=config.data.seq_len,
                            pooled_targets=base_file.pooled_targets(tokenizer))
  # A full run trains no adapter; the config boundary still wants a spec, which nothing reads.
  unused_spec = lora.LoraSpec(target_modules=("head",))
  tc = _train_config("base_model", model, unused_spec, config.training, config.opt, config.run,
                     train, val, full=True, base_params="", parent_adapter="")
  run_dir = layout.run_dir(output_dir)
  result = loop.train(tc, run_dir)
  if result.status == "stopped":
    return Trained(result.status, "", run_dir, result.step, result.best_val_loss)
  path = layout.base_file(output_dir)
  if not loop.is_primary():  # process 0 of a multi-process run writes the results
    return Trained(result.status, path, run_dir, result.step, result.best_val_loss)
  base_file.save_model(path, result.params, config.model, {
      "trained_on": list(train.styles), "packs": [os.path.abspath(p) for p in pack_dirs],
      "steps": result.step, "best_val_loss": result.best_val_loss,
      "train_windows": train.n_windows, "seq_len": config.data.seq_len,
      "augment": dataclasses.asdict(config.augment),
      "config": tc.to_json()})
  tokenizer.save_vocab(output_dir)
  return Trained(result.status, path, run_dir, result.step, result.best_val_loss)


def _adapter_spec(level: settings.AdapterSettings) -> lora.LoraSpec:
  return lora.LoraSpec(rank=level.rank, alpha=level.alpha, dropout=level.dropout,
                       target_modules=settings.expand_targets(level.target_modules))


def _check_pack(pack_dir: str, style: str, parent: str | None) -> style_pack.StylePack:
  pack = style_pack.load_style_pack(pack_dir)
  if pack.style != style or pack.parent != parent:
    got = f"{pack.parent}/{pack.style}" if pack.parent else pack.style
    want = f"{parent}/{style}" if parent else style
    raise style_pack.StylePackError(f"{pack.path} is the pack of {got!r}, not of {want!r}")
  return pack


def _train_adapter(config: settings.AdapterConfig, level: settings.AdapterSettings, name: str,
                   pack: style_pack.StylePack, base: base_file.BaseModel, level_dir: str,
                   parent_lora: str, extra: dict) -> tuple[Trained, lora.AdapterRecord | None]:
  tokenizer = base_file.load_tokenizer(base.path, base.settings)
  split = lambda s: windows.split_windows([pack.path], s, tokenizer, config.data.seq_len,
                                          config.data.cache_dir)
  train, val = split("train"), split("validation")
  _log_data(name, train, val)
  model = music_lm.LmConfig(**dict(dataclasses.asdict(base.settings), dropout=0.0),
                            seq_len=config.data.seq_len,
                            pooled_targets=base_file.pooled_targets(tokenizer))
  tc = _train_config(name, model, _adapter_spec(level), level, config.opt, config.run, train,
                     val, full=False, base_params=base.path, parent_adapter=parent_lora)
  run_dir = layout.run_dir(level_dir)
  result = loop.train(tc, run_dir)
  trained = Trained(result.status, "", run_dir, result.step, result.best_val_loss)
  if result.status == "stopped" or not loop.is_primary():  # process 0 writes the results
    return trained, None
  record = lora.load_adapter(result.export_path)
  record = dataclasses.replace(record, extra=dict(
      record.extra, **extra, style=name, pack=pack.path, base_model=base.path,
      settings=dataclasses.asdict(level), config_sources=list(config.sources),
      best_val_loss=result.best_val_loss, train_windows=train.n_windows,
      seq_len=config.data.seq_len))
  return trained, record


def train_parent(config: settings.AdapterConfig, parent: str, pack_dir: str, base_path: str,
                 output_dir: str) -> Trained:
  """The genre's parent adapter over the frozen base: `<output_dir>/<parent>/<parent>.lora`."""
  pack = _check_pack(pack_dir, parent, None)
  base = base_file.load_model(base_path)
  level_dir = layout.parent_dir(output_dir, parent)
  trained, record = _train_adapter(config, config.parent, parent, pack, base, level_dir, "",
                                   {"level": "parent"})
  if trained.status == "stopped":
    return trained
  path = layout.parent_lora(output_dir, parent)
  if record is None:  # not the process that writes
    return dataclasses.replace(trained, path=path)
  lora.save_adapter(path, record)
  base_file.copy_vocab(base.path, level_dir)
  return dataclasses.replace(trained, path=path)


def check_parent(record: lora.AdapterRecord, path: str, parent: str,
                 base: base_file.BaseModel) -> None:
  """Raise unless `record` is the parent adapter of genre `parent`, trained on `base`."""
  if record.extra.get("level") != "parent" or record.name != parent:
    raise lora.IncompatibleAdapterError(
        f"{path} is not the parent adapter of {parent!r} (its name is {record.name!r}, its level "
        f"{record.extra.get('level')!r})")
  if record.base_fingerprint != base.fingerprint:
    raise lora.IncompatibleAdapterError(
        f"parent {path} was trained on base {record.base_fingerprint}, but {base.path} is base "
        f"{base.fingerprint}: train the parent on this base first")


def train_child(config: settings.AdapterConfig, parent: str, child: str, pack_dir: str,
                parent_path: str, base_path: str, output_dir: str) -> Trained:
  """A child adapter over base + parent: `<output_dir>/<parent>/<child>/<child>.lora`.

  Raises unless `parent_path` is the parent of `parent` trained on this base.
  """
  pack = _check_pack(pack_dir, child, parent)
  base = base_file.load_model(base_path)
  parent_path = os.path.abspath(parent_path)
  parent_record = lora.load_adapter(parent_path)
  check_parent(parent_record, parent_path, parent, base)
  link = {"name": parent, "path": parent_path,
          "fingerprint": lora.fingerprint(parent_record.adapter.params),
          "base_fingerprint": parent_record.base_fingerprint}
  level_dir = layout.child_dir(output_dir, parent, child)
  trained, record = _train_adapter(config, config.child, f"{parent}/{child}", pack, base,
                                   level_dir, parent_path, {"level": "child", "parent": link})
  if trained.status == "stopped":
    return trained
  path = layout.child_lora(output_dir, parent, child)
  if record is None:  # not the process that writes
    return dataclasses.replace(trained, path=path)
  lora.save_adapter(path, record)
  base_file.copy_vocab(base.path, level_dir)
  return dataclasses.replace(trained, path=path)
