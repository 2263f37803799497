"""The training loop's config groups with their defaults, shared by every family's config file.

A config file (`configs/*.py`) declares its family's `model` group and builds the loop's groups
here, overriding only what differs: `config.opt = config_groups.opt(warmup_steps=30)`. An override
that names no field of the group is an error, so a typo never adds a setting nothing reads. The
dataclasses these groups become, and the checks on their values, are in `lora_jax/train/config.py`.
"""

from typing import Any

import ml_collections


def _group(defaults: dict[str, Any], overrides: dict[str, Any],
           name: str) -> ml_collections.ConfigDict:
  unknown = sorted(set(overrides) - set(defaults))
  if unknown:
    raise ValueError(f"config_groups.{name}() has no field {', '.join(unknown)}; "
                     f"its fields: {', '.join(defaults)}")
  return ml_collections.ConfigDict({**defaults, **overrides})


def lora(**overrides: Any) -> ml_collections.ConfigDict:
  """The adapter: `lora_jax.lora.spec.LoraSpec`'s fields."""
  return _group(dict(
      rank=8,
      alpha=16.0,  # scale = alpha / rank
      dropout=0.05,  # on the adapter's input
      module_dropout=0.0,  # probability of skipping an adapted module in a step
      target_modules=("q_proj", "v_proj"),  # dotted-path suffixes of dense layers
      include=(),  # regexes over module paths, added to target_modules
      exclude=(),  # regexes removing modules again
      rank_pattern=(),  # ((regex, rank), ...): first match wins
      alpha_pattern=(),  # ((regex, alpha), ...)
      use_rslora=False,  # scale = alpha / sqrt(rank)
      init="zeros",  # B = 0, A kaiming-uniform (PEFT); or 'gaussian'
      use_dora=False,  # DoRA: also learn a per-output magnitude (PEFT's use_dora)
  ), overrides, "lora")


def opt(**overrides: Any) -> ml_collections.ConfigDict:
  """AdamW and its schedule."""
  return _group(dict(
      learning_rate=1e-3,  # peak
      warmup_steps=100,  # linear from 0
      decay="cosine",  # 'cosine', 'linear', 'constant' or 'inverse' (InverseLR)
      final_lr_fraction=0.1,  # end of decay, as a fraction of the peak
      inv_gamma=1.0,  # 'inverse': (1 + step / inv_gamma)^-inv_power
      inv_power=1.0,
      inv_warmup=0.0,  # 'inverse': rate x (1 - inv_warmup^(step + 1))
      weight_decay=0.01,  # AdamW, on >= 2-D parameters only
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      clip_norm=1.0,  # global-norm clipping; 0 turns it off
      grad_accum_steps=1,  # micro-batches per optimiser step
      lr_groups=(),  # ((regex over trainable paths, lr multiplier), ...)
      ema_beta=0.0,  # > 0: an EMA of the trained weights, exported instead of them
      ema_power=0.75,
  ), overrides, "opt")


def data(**overrides: Any) -> ml_collections.ConfigDict:
  """Where the examples come from; their arrays are the family's (`Family.load`)."""
  return _group(dict(
      path="",  # .npz of the family's arrays
      val_path="",  # '' holds out val_fraction of data.path
      val_fraction=0.1,
      synthetic_examples=0,  # > 0 trains on the family's synthetic examples instead of data.path
      batch_size=32,  # examples per optimiser step, all devices
      eval_batch_size=32,
  ), overrides, "data")


def ckpt(**overrides: Any) -> ml_collections.ConfigDict:
  """Checkpoints and the final export."""
  return _group(dict(
      every_steps=500,  # plus after each evaluation, on SIGTERM/SIGINT, at the end
      keep_last=2,
      keep_best=1,  # by validation loss
      export="best",  # at the end: 'best' (lowest validation loss) or 'final' params
  ), overrides, "ckpt")


def mesh(**overrides: Any) -> ml_collections.ConfigDict:
  """Device mesh axis sizes."""
  return _group(dict(
      data=-1,  # -1: the devices the other axes leave
      fsdp=1,
      model=1,
  ), overrides, "mesh")


def training(**overrides: Any) -> ml_collections.ConfigDict:
  """The run itself: what trains, how long, the base, evaluation and the LoRA variants."""
  return _group(dict(
      type="lora",  # 'lora' or 'full'
      steps=5000,  # optimiser steps
      seed=0,  # data order, initialisation, dropout
      precision="float32",  # 'float32', 'bfloat16' or 'float16' (loss-scaled)
      base_dtype="float32",  # frozen base storage: 'float32' or 'bfloat16'
      base_params="",  # Flax safetensors of the base; '' = random (smoke runs)
      parent_adapter="",  # .lora this adapter is trained on top of (child)
      init_adapter="",  # .lora a new adapter starts from (LoRAW's --lora-ckpt-path); not on resume
      quantize="",  # QLoRA: base kernels 'int8', 'int8_block', 'nf4'; '' none
      eval_every=250,  # steps; also at each epoch end
      patience=0,  # evaluations without improvement before stopping; 0 = never
      log_every=50,  # steps per CSV/TensorBoard/console line
      max_nonfinite_in_a_row=20,  # skipped steps in a row that stop the run
      allow_changed_config=False,  # resume a checkpoint written with other settings
      relora_every=0,  # ReLoRA: fold the adapter into the base every N steps; 0 off
      relora_warmup=0,  # ReLoRA: steps of learning-rate re-warm after each fold
  ), overrides, "training")

