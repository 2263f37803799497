r"""Train the base MusicTransformer the style adapters sit on, on the train splits of style packs.

python launch/train_base.py --config=configs/base_model.py \
    --packs=style_packs/essen_folk,style_packs/baroque_chorale --output-dir=checkpoints/base_model

Writes <output-dir>/base_model.safetensors and vocab.json; the run (checkpoints, metrics) goes to
<output-dir>/run/. The same command again resumes (with changed settings only with
--config.run.allow_changed_config=True). Any config value: --config.training.epochs=20.
"""

import os

from absl import flags
from absl import logging
import jax

from lora_jax import cli
from lora_jax.hierarchy import settings, training
from lora_jax.train import exit_status

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIG = cli.define_config(os.path.join(_ROOT, "configs", "base_model.py"),
                            "Base-model config file.")
_PACKS = flags.DEFINE_list("packs", None, "Style pack folders whose train splits the base learns.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "checkpoints/base_model",
                                  "Folder for base_model.safetensors, vocab.json and run/.")
flags.mark_flags_as_required(["packs"])
cli.define_distributed()


def main(args):
  if len(args) > 1:
    raise ValueError(f"unexpected arguments: {args[1:]}")
  cli.initialize_distributed()
  config = settings.load_base_config(_CONFIG.value)
  logging.info("JAX %s on %d devices: %s", jax.__version__, jax.device_count(), jax.devices())
  result = training.train_base(config, _PACKS.value, _OUTPUT_DIR.value)
  logging.info("%s at step %d; best validation loss %s; %s", result.status, result.steps,
               result.best_val_loss, result.path or "rerun the same command to resume")
  return exit_status.of(result.status)  # 75: stopped by a signal, resumable


if __name__ == "__main__":
  cli.run(main, "train_base")
