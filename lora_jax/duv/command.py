"""The command line the two DUV training programs share (launch/train_duv.py, train_duv_lora.py).

They differ only in the kind of run each accepts (`training.type` 'full' for the base, 'lora' for
an adapter), so that handing a base config to the adapter program, or the reverse, is an error.
Running one again with the same workdir resumes; SIGTERM or Ctrl-C checkpoints and exits with
status 75 (lora_jax.train.exit_status). Bad input ends in one error line and exit status 1.

The base program also takes the DUV seed's own command (`lora_jax.duv.seed_csv`):
  train_duv.py --csv-train=train.csv --csv-valid=valid.csv --stats-json=stats.json \
      --out=checkpoints/duv_universal --epochs=20
with configs/duv/base.py unless --config, and the run kept in <out>_run unless --workdir.
"""

import os

from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from lora_jax import cli
from lora_jax.duv import seed_csv, training
from lora_jax.train import exit_status

_BASE_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "configs", "duv", "base.py")


def main(training_type: str, program: str) -> None:
  """Define --config and --workdir, train one `training_type` run, print what it wrote."""
  shorthand = training_type == "full"
  if shorthand:
    config = cli.define_config(_BASE_CONFIG, "DUV training config file.")
    csv_train = flags.DEFINE_string("csv_train", None, "The seed's note CSV to train on (see "
                                    "lora_jax/duv/seed_csv.py for its columns).")
    csv_valid = flags.DEFINE_string("csv_valid", None, "The seed's note CSV of held-out pieces.")
    stats_json = flags.DEFINE_string("stats_json", None, "Where the feature statistics go.")
    out = flags.DEFINE_string("out", None, "The bundle folder to write (with --csv_train).")
    epochs = flags.DEFINE_integer("epochs", None, "config.duv.epochs (with --csv_train).")
  else:
    config = config_flags.DEFINE_config_file("config", None, "DUV training config file.",
                                             lock_config=True)
    flags.mark_flags_as_required(["config"])
  workdir = flags.DEFINE_string("workdir", None, "Directory for windows, checkpoints, metrics.")
  cli.define_distributed()

  def run(argv):
    if len(argv) > 1:
      raise ValueError(f"unexpected arguments: {argv[1:]}")
    cli.initialize_distributed()
    logging.info("JAX %s on %d devices: %s", jax.__version__, jax.device_count(), jax.devices())
    try:
      if shorthand and csv_train.value is not None:
        given = {"--csv-valid": csv_valid.value, "--stats-json": stats_json.value,
                 "--out": out.value}
        missing = [name for name, value in given.items() if not value]
        if missing:
          raise ValueError(f"--csv-train needs {', '.join(missing)} too")
        path = seed_csv.train_from_csv(config.value, csv_train.value, csv_valid.value,
                                       stats_json.value, out.value, epochs.value,
                                       workdir.value or out.value.rstrip("/") + "_run")
        print(f"wrote {path} and {stats_json.value}")
        return None
      if shorthand and any(f.value is not None for f in (csv_valid, stats_json, out, epochs)):
        raise ValueError("--csv-valid, --stats-json, --out and --epochs go with --csv-train")
      if workdir.value is None:
        raise ValueError("--workdir is required")
      print(f"wrote {training.train(config.value, workdir.value, training_type)}")
    except exit_status.Stopped as e:  # by a signal, checkpointed: a distinct exit status
      logging.info("%s", e)
      return exit_status.STOPPED
    return None

  cli.run(run, program)
