r"""Train an instrument LoRA adapter on the DUV base bundle and write it beside the base.

python launch/train_duv_lora.py --config=configs/duv/guitar.py --workdir=runs/duv_guitar

The config is the shared loop's plus a `duv` group (lora_jax.duv.training.DuvData). Running it
again with the same workdir resumes; SIGTERM or Ctrl-C checkpoints and exits. Bad input ends in
one error line and exit status 1.
"""

from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from lora_jax import cli
from lora_jax.duv import training

_CONFIG = config_flags.DEFINE_config_file("config", None, "DUV training config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for windows, checkpoints, metrics.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  logging.info("JAX %s on %d devices: %s", jax.__version__, jax.device_count(), jax.devices())
  path = training.train(_CONFIG.value, _WORKDIR.value, "lora")
  print(f"wrote {path}")


if __name__ == "__main__":
  cli.run(main, "train_duv_lora")
