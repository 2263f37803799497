"""The command line the two DUV training programs share (launch/train_duv.py, train_duv_lora.py).

They differ only in the kind of run each accepts (`training.type` 'full' for the base, 'lora' for
an adapter), so that handing a base config to the adapter program, or the reverse, is an error.
Running one again with the same workdir resumes; SIGTERM or Ctrl-C checkpoints and exits with
status 75 (lora_jax.train.exit_status). Bad input ends in one error line and exit status 1.
"""

from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from lora_jax import cli
from lora_jax.duv import training
from lora_jax.train import exit_status


def main(training_type: str, program: str) -> None:
  """Define --config and --workdir, train one `training_type` run, print what it wrote."""
  config = config_flags.DEFINE_config_file("config", None, "DUV training config file.",
                                           lock_config=True)
  workdir = flags.DEFINE_string("workdir", None, "Directory for windows, checkpoints, metrics.")
  flags.mark_flags_as_required(["config", "workdir"])
  cli.define_distributed()

  def run(argv):
    if len(argv) > 1:
      raise ValueError(f"unexpected arguments: {argv[1:]}")
    cli.initialize_distributed()
    logging.info("JAX %s on %d devices: %s", jax.__version__, jax.device_count(), jax.devices())
    try:
      print(f"wrote {training.train(config.value, workdir.value, training_type)}")
    except exit_status.Stopped as e:  # by a signal, checkpointed: a distinct exit status
      logging.info("%s", e)
      return exit_status.STOPPED

  cli.run(run, program)
