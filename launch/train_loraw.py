r"""Train a LoRA (or the whole model) of Stable Audio's DiT with LoRAW's command line.

python launch/train_loraw.py --model-config=model_config.json --dataset-config=dataset.json \
  --pretrained-ckpt-path=model.ckpt --t5-dir=t5-base --use-lora --save-dir=runs/loraw

The seed's flags (`--model-config`, `--dataset-config`, `--pretrained-ckpt-path`, `--use-lora`,
`--lora-ckpt-path`, `--relora-every`, `--quantize`, `--save-dir`, `--batch-size`,
`--accum-batches`, `--checkpoint-every`, `--gradient-clip-val`, `--seed`, `--name`) map onto
configs/dit.py's fields (lora_jax/loraw/training.py says which); `--max-steps` bounds the run,
which the original leaves open; `--t5-dir` is the user's T5 folder (without it the prompt goes
through a small trainable byte-token embedding, not T5); `--config.<field>=...` sets any other.
Running it again with the same --save-dir resumes. Bad input ends in one error line and exit status 1.
"""

import os

from absl import flags
from ml_collections import config_flags

from lora_jax import cli
from lora_jax.loraw import training
from lora_jax.train import exit_status

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIG = cli.define_config(os.path.join(_ROOT, "configs", "dit.py"),
                            "Base training config (configs/dit.py).")
_MODEL_CONFIG = flags.DEFINE_string("model_config", None, "Stable Audio model config JSON.")
_DATASET_CONFIG = flags.DEFINE_string("dataset_config", None, "pre_encoded dataset config JSON.")
_SAVE_DIR = flags.DEFINE_string("save_dir", None, "Run folder: checkpoints, metrics, exports.")
_PRETRAINED = flags.DEFINE_string("pretrained_ckpt_path", "",
                                  "Base: an original checkpoint or this project's Flax file.")
_USE_LORA = flags.DEFINE_bool("use_lora", False, "Train a LoRA (else the whole model).")
_LORA_CKPT = flags.DEFINE_string("lora_ckpt_path", "", "LoRA (LoRAW file or .lora) to continue.")
_T5 = flags.DEFINE_string("t5_dir", "", "The user's T5 folder (config.json, tokenizer.json, "
                          "model.safetensors) for a model config with a t5 prompt conditioner; "
                          "'' trains a small byte-token embedding instead (not T5).")
_RELORA = flags.DEFINE_integer("relora_every", None, "ReLoRA: fold into the base every N steps.")
_QUANTIZE = flags.DEFINE_string("quantize", "false",
                                "QLoRA: 'true' (4-bit nf4, the seed's), a kind "
                                "(int8, int8_block, nf4), or 'false'.")
_BATCH = flags.DEFINE_integer("batch_size", None, "Examples per step, all devices.")
_ACCUM = flags.DEFINE_integer("accum_batches", None, "Gradient accumulation micro-batches.")
_CKPT_EVERY = flags.DEFINE_integer("checkpoint_every", None, "Steps between checkpoints.")
_CLIP = flags.DEFINE_float("gradient_clip_val", None, "Global-norm clipping; 0 off.")
_SEED = flags.DEFINE_integer("seed", None, "Random seed.")
_MAX_STEPS = flags.DEFINE_integer("max_steps", None, "Optimiser steps in the whole run.")
_NAME = flags.DEFINE_string("name", None, "Run name, recorded in the adapter.")
flags.mark_flags_as_required(["model_config", "dataset_config", "save_dir"])


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  quantize = {"false": "", "true": "nf4"}.get(_QUANTIZE.value, _QUANTIZE.value)
  result = training.run(_CONFIG.value, config_flags.get_override_values(flags.FLAGS["config"]),
                        training.Flags(
                            model_config=_MODEL_CONFIG.value, dataset_config=_DATASET_CONFIG.value,
                            save_dir=_SAVE_DIR.value, pretrained_ckpt_path=_PRETRAINED.value,
                            use_lora=_USE_LORA.value, lora_ckpt_path=_LORA_CKPT.value,
                            t5_dir=_T5.value,
                            relora_every=_RELORA.value, quantize=quantize,
                            batch_size=_BATCH.value, accum_batches=_ACCUM.value,
                            checkpoint_every=_CKPT_EVERY.value,
                            gradient_clip_val=_CLIP.value, seed=_SEED.value,
                            max_steps=_MAX_STEPS.value, name=_NAME.value))
  return exit_status.of(result.status)


if __name__ == "__main__":
  cli.run(main, "train_loraw")
