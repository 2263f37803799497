r"""Train a LoRA adapter (or a whole model) for any model family.

python launch/train.py --config=configs/music_lm.py:tiny --workdir=runs/tiny

`--relora-every=N` (the LoRAW seed's flag, the same as `--config.training.relora_every=N`) folds
the adapter into the base every N steps (ReLoRA). Running it again with the same workdir resumes
from the last checkpoint. SIGTERM or Ctrl-C checkpoints and exits with status 75
(lora_jax.train.exit_status). On a TPU pod or several hosts, run it on every host with
`--distributed` (and, where the cluster is not detected, `--coordinator_address=host:port
--num_processes=N --process_id=i`); the workdir must be one shared directory. Bad input ends in
one error line and exit status 1.
"""

from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from lora_jax import cli
from lora_jax.train import config as config_lib
from lora_jax.train import exit_status
from lora_jax.train import loop

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and exports.")
_RELORA_EVERY = flags.DEFINE_integer(
    "relora_every", None, "ReLoRA: fold the adapter into the base every N steps (sets "
    "config.training.relora_every).")
flags.mark_flags_as_required(["config", "workdir"])
cli.define_distributed()


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  cli.initialize_distributed()
  if _RELORA_EVERY.value is not None:
    _CONFIG.value.training.relora_every = _RELORA_EVERY.value
  config = config_lib.from_config_dict(_CONFIG.value)
  logging.info("JAX %s on %d devices (%d here, process %d of %d)", jax.__version__,
               jax.device_count(), jax.local_device_count(), jax.process_index(),
               jax.process_count())
  result = loop.train(config, _WORKDIR.value)
  logging.info("%s at step %d; best validation loss %s; %s", result.status, result.step,
               result.best_val_loss, result.export_path or "no export")
  return exit_status.of(result.status)  # 75: stopped by a signal, resumable


if __name__ == "__main__":
  cli.run(main, "train")
