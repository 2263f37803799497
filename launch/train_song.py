r"""Fine-tune SongGeneration's LM from the fork's train_config.yaml (full or LoRA).

python launch/train_song.py --config=training/train_config.yaml

The YAML's sections are the fork's (paths, data, training, lora, model; lora_jax/song/
yaml_config.py says how each key maps). `paths.prepared_data_dir` holds the fork's prepared
token files (manifest.jsonl and {idx}.pt). Running it again resumes; SIGTERM checkpoints and
exits with status 75. Bad input ends in one error line and exit status 1.
"""

import os

from absl import flags

from lora_jax import cli
from lora_jax.song import command
from lora_jax.train import exit_status

_CONFIG = flags.DEFINE_string("config", None, "The fork's train_config.yaml.")
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DEFAULTS = cli.define_config(
    os.path.join(_ROOT, "configs", "song_lm.py"), "The song_lm config the YAML is read over; it "
    "declares every field the YAML does not set.", name="defaults")
flags.mark_flags_as_required(["config"])


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  return exit_status.of(command.run(_CONFIG.value, _DEFAULTS.value).result.status)


if __name__ == "__main__":
  cli.run(main, "train_song")
