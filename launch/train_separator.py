r"""Train the vocal/accompaniment separator and write its weights file.

python launch/train_separator.py --config=configs/separator.py --workdir=runs/separator

Renders the stems the first time (cached under config.stems.dir), trains on the shared loop in
<workdir>/run and copies the weights to config.stems.out. Running it again with the same workdir
resumes; SIGTERM or Ctrl-C checkpoints and exits with status 75. Bad input: one error line and
status 1.
"""

import os

from absl import flags

from lora_jax import cli
from lora_jax.audio.separator import training
from lora_jax.train import exit_status

_CONFIG = cli.define_config(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), "configs", "separator.py"), "Separator training config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for windows, checkpoints and metrics.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  try:
    print(f"wrote {training.train(_CONFIG.value, _WORKDIR.value)}")
  except exit_status.Stopped as e:
    print(e)
    return exit_status.STOPPED
  return None


if __name__ == "__main__":
  cli.run(main, "train_separator")
