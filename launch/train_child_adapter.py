r"""Train a sub-style's child adapter over the frozen base and the frozen parent adapter.

python launch/train_child_adapter.py --parent=celtic_fiddle --child=reel \
    --pack=style_packs/celtic_fiddle/reel \
    --parent_lora=checkpoints/adapters/celtic_fiddle/celtic_fiddle.lora \
    --base-model=assets/base_model/base_model.safetensors --epochs=8 --batch-size=16 --rank=8 \
    --alpha=16

Settings: configs/lora_adapter_config.py < configs/genres/<parent>.py (optional; --config_dir
folders are looked in first) <
configs/styles/<parent>/<child>.py < these flags (and any `--config.child.<key>=value`). Writes
<output-dir>/<parent>/<child>/<child>.lora (recording its parent) and vocab.json, with the run in
<output-dir>/<parent>/<child>/run/; the same command again resumes; a resume with changed settings (a learning rate, a batch size) is
refused unless `--config.run.allow_changed_config=True`.
"""

import os

from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from lora_jax import cli
from lora_jax.hierarchy import layout, settings, training
from lora_jax.train import exit_status

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIG = cli.define_config(os.path.join(_ROOT, "configs", "lora_adapter_config.py"),
                            "Adapter defaults; genre and style files are read from beside it.")
_PARENT = flags.DEFINE_string("parent", None, "Genre name.")
_CHILD = flags.DEFINE_string("child", None,
                             "Sub-style name; configs/styles/<parent>/<child>.py is optional.")
_PACK = flags.DEFINE_string("pack", None, "The sub-style's style pack folder.")
_PARENT_LORA = flags.DEFINE_string("parent_lora", None, "The parent's .lora (default: "
                                   "<output-dir>/<parent>/<parent>.lora).")
_BASE = flags.DEFINE_string("base_model", "checkpoints/base_model/base_model.safetensors",
                            "Base model file; the parent must have been trained on it.")
_CONFIG_DIR = flags.DEFINE_list("config_dir", [], "Your own folders of genres/<genre>.py and "
                                "styles/<genre>/<style>.py, looked in before the project's.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "checkpoints/adapters", "Root of the adapters.")
_EPOCHS = flags.DEFINE_integer("epochs", None, "config.child.epochs")
_BATCH = flags.DEFINE_integer("batch_size", None, "config.child.batch_size")
_RANK = flags.DEFINE_integer("rank", None, "config.child.rank")
_ALPHA = flags.DEFINE_float("alpha", None, "config.child.alpha")
_LR = flags.DEFINE_float("learning_rate", None, "config.child.learning_rate")
flags.mark_flags_as_required(["parent", "child", "pack"])
cli.define_distributed()


def main(args):
  if len(args) > 1:
    raise ValueError(f"unexpected arguments: {args[1:]}")
  cli.initialize_distributed()
  overrides = settings.shorthand_overrides("child", {
      "epochs": _EPOCHS.value, "batch_size": _BATCH.value, "rank": _RANK.value,
      "alpha": _ALPHA.value, "learning_rate": _LR.value},
      config_flags.get_override_values(flags.FLAGS["config"]))
  defaults_path = config_flags.get_config_filename(flags.FLAGS["config"]).split(":")[0]
  config = settings.resolve(_CONFIG.value, defaults_path, _PARENT.value, _CHILD.value, overrides,
                            _CONFIG_DIR.value)
  logging.info("JAX %s on %d devices; settings from %s", jax.__version__, jax.device_count(),
               ", ".join(config.sources))
  parent_lora = _PARENT_LORA.value or layout.parent_lora(_OUTPUT_DIR.value, _PARENT.value)
  result = training.train_child(config, _PARENT.value, _CHILD.value, _PACK.value, parent_lora,
                                _BASE.value, _OUTPUT_DIR.value)
  logging.info("%s at step %d; best validation loss %s; %s", result.status, result.steps,
               result.best_val_loss, result.path or "rerun the same command to resume")
  return exit_status.of(result.status)  # 75: stopped by a signal, resumable


if __name__ == "__main__":
  cli.run(main, "train_child_adapter")
