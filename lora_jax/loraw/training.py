"""`launch/train_loraw.py`'s work: LoRAW's flags and a Stable Audio model config onto the dit
family's config, then the shared training loop.

Order: every input is read and checked (model config, dataset config and every clip, the
pretrained checkpoint, the LoRA checkpoint) before anything is written; then the latents `.npz`,
the converted base and the starting adapter are written into `--save-dir`, and the loop trains
there (running it again resumes from the last checkpoint). At the end a LoRA run also writes its
adapter as a LoRAW file, `lora.ckpt`, beside the loop's `adapter.lora`.

The config is `configs/dit.py` with, in this order, `--config.*` overrides, the model config
JSON's fields, and the LoRAW flags. A `--config.*` override of a field that the JSON or a flag
sets to another value is an error naming both, never silently replaced.
"""

import dataclasses
import os
from typing import Any

import jax
from absl import logging

from lora_jax import lora
from lora_jax.data.dit import pre_encoded
from lora_jax.families import dit as dit_family
from lora_jax.interop import flax_weights
from lora_jax.interop import loraw as loraw_file
from lora_jax.loraw import base_weights, model_config as model_config_lib, text_encoder
from lora_jax.loraw import training_section, weights
from lora_jax.train import config as config_lib
from lora_jax.train import loop

LATENTS = "latents.npz"
BASE = "base.safetensors"
INIT_ADAPTER = "init_adapter.lora"
LORAW_FILE = "lora.ckpt"


@dataclasses.dataclass(frozen=True)
class Flags:
  """The seed's command line (None: not given)."""

  model_config: str
  dataset_config: str
  save_dir: str
  pretrained_ckpt_path: str
  use_lora: bool
  lora_ckpt_path: str
  t5_dir: str  # the user's T5 folder ('' none: the byte-token embedding)
  relora_every: int | None
  quantize: str  # '' or a lora_jax.quant kind
  batch_size: int | None
  accum_batches: int | None
  checkpoint_every: int | None
  gradient_clip_val: float | None
  seed: int | None
  max_steps: int | None
  name: str | None


def _get(config: Any, dotted: str) -> Any:
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def _set(config: Any, dotted: str, value: Any) -> None:
  *groups, leaf = dotted.split(".")
  node = config
  for g in groups:
    node = node[g]
  node[leaf] = value


def _same(a: Any, b: Any) -> bool:
  norm = lambda v: tuple(v) if isinstance(v, (list, tuple)) else v
  return norm(a) == norm(b)


def apply_overrides(config: Any, user_overrides: dict[str, Any], overrides: dict[str, Any]
                    ) -> None:
  """Set `overrides` on `config`; a field among the user's `--config.*` ones must agree."""
  for key, value in overrides.items():
    current = _get(config, key)
    if key in user_overrides and not _same(current, value):
      raise config_lib.ConfigError(f"--config.{key}={current!r} contradicts {value!r} from the "
                                   "model config or a LoRAW flag; give it in one place")
    _set(config, key, value)


def _flag_overrides(flags: Flags, mc: model_config_lib.ModelConfig) -> dict[str, Any]:
  section = mc.lora
  out: dict[str, Any] = {"training.type": "lora" if flags.use_lora else "full"}
  if mc.training is not None:
    mapped, notes = training_section.overrides(mc.training, flags.use_lora,
                                               section.lr if section else None)
    out.update(mapped)
    for note in notes:
      logging.info("%s", note)
  if flags.use_lora:
    if section is None:
      raise model_config_lib.ModelConfigError(
          f"--use-lora needs a 'lora' section in the model config {flags.model_config}")
    if section.multiplier == 0:
      raise model_config_lib.ModelConfigError(
          "lora.multiplier 0 trains nothing (the adapter is bypassed); use it at inference")
    out.update(model_config_lib.lora_overrides(section))
  for key, value in (("training.relora_every", flags.relora_every),
                     ("data.batch_size", flags.batch_size),
                     ("data.eval_batch_size", flags.batch_size),
                     ("opt.grad_accum_steps", flags.accum_batches),
                     ("ckpt.every_steps", flags.checkpoint_every),
                     ("opt.clip_norm", flags.gradient_clip_val),
                     ("training.seed", flags.seed), ("training.steps", flags.max_steps),
                     ("name", flags.name)):
    if value is not None:
      out[key] = value
  if flags.quantize:
    out["training.quantize"] = flags.quantize
  return out


def run(config_dict: Any, user_overrides: dict[str, Any], flags: Flags) -> loop.Result:
  """Check every input, write the run's inputs into `flags.save_dir`, train there."""
  mc = model_config_lib.load(flags.model_config)
  dataset = pre_encoded.read_dataset_config(flags.dataset_config)
  for what, path in (("--pretrained-ckpt-path", flags.pretrained_ckpt_path),
                     ("--lora-ckpt-path", flags.lora_ckpt_path)):
    if path and not os.path.isfile(path):
      raise FileNotFoundError(f"{what} {path}: no such file")
  if flags.lora_ckpt_path and not flags.use_lora:
    raise ValueError("--lora-ckpt-path continues a LoRA: it needs --use-lora")
  prompts = text_encoder.load(mc, flags.t5_dir)
  latents_path = os.path.join(flags.save_dir, LATENTS)
  overrides = {f"model.{k}": v for k, v in mc.model_fields.items()}
  overrides.update({f"model.{k}": v for k, v in
                    mc.text_fields(prompts.width if prompts else 0).items()})
  overrides.update(_flag_overrides(flags, mc))
  overrides.update({"data.path": latents_path, "data.synthetic_examples": 0})
  base_path = ""
  if flags.pretrained_ckpt_path:
    base_path = (flags.pretrained_ckpt_path if base_weights.is_flax_file(flags.pretrained_ckpt_path)
                 else os.path.join(flags.save_dir, BASE))
    overrides["training.base_params"] = base_path
  if flags.lora_ckpt_path:
    overrides["training.init_adapter"] = (
        flags.lora_ckpt_path if weights.is_lora_file(flags.lora_ckpt_path)
        else os.path.join(flags.save_dir, INIT_ADAPTER))
  apply_overrides(config_dict, user_overrides, overrides)
  config = config_lib.from_config_dict(config_dict)
  model: dit_family.DitConfig = config.model

  # Read and check everything; nothing is written before this block ends.
  arrays = pre_encoded.load_arrays(dataset, model.io_channels, model.latent_length,
                                   model.text_len, prompts)
  dit_family.make(model, "float32").check_arrays(arrays, flags.dataset_config)
  base = None
  if flags.pretrained_ckpt_path and base_path == flags.pretrained_ckpt_path:
    base_weights.check_text_encoder(base_path, model)
  if flags.pretrained_ckpt_path and base_path != flags.pretrained_ckpt_path:
    base = base_weights.from_original(flags.pretrained_ckpt_path, model, config.training.seed)
  init = None
  if flags.lora_ckpt_path and not weights.is_lora_file(flags.lora_ckpt_path):
    abstract = _abstract(model)
    fingerprint = lora.fingerprint(base) if base is not None else ""
    init = weights.load_weights(flags.lora_ckpt_path, abstract, mc.lora.alpha * mc.lora.multiplier,
                                fingerprint)
    # The file's modules must be the whitelist's, at its rank: the loop checks that on start.

  pre_encoded.write_npz(arrays, latents_path)
  if base is not None:
    base_weights.write_flax(base, base_path, config.name, model)
  if init is not None:
    lora.save_adapter(config.training.init_adapter, init)
  logging.info("%d latent clips of %d frames from %s", len(arrays["latents"]),
               model.latent_length, flags.dataset_config)
  result = loop.train(config, flags.save_dir)
  if result.export_path.endswith(".lora"):
    record = lora.load_adapter(result.export_path)
    base_for_dora = None
    if record.adapter.magnitudes() and config.training.base_params:
      base_for_dora = flax_weights.load_params(config.training.base_params, _abstract(model))
    try:
      line = weights.save_weights(record, os.path.join(flags.save_dir, LORAW_FILE),
                                  base_for_dora)
    except loraw_file.LorawFormatError as e:  # LoRAW's DoRA means another function on biases
      logging.warning("%s is not written as a LoRAW file: %s", result.export_path, e)
    else:
      logging.info("%s (trained at multiplier %g: alpha %g there)", line, mc.lora.multiplier,
                   mc.lora.alpha)
  return result


def _abstract(model: dit_family.DitConfig) -> Any:
  family = dit_family.make(model, "float32")
  return jax.eval_shape(lambda k: family.model.init(k, *family.init_args())["params"],
                        jax.random.key(0))
