r"""prepare_song_data, then train_song, on one train_config.yaml, in one process.

python launch/prepare_and_train_song.py --config=jobs/<id>/train_config.yaml

What the studio's song jobs run (lora_jax/studio/song_jobs.py): WAV clips + metadata.jsonl to
token files, then LoRA over the base; each step is the launcher's own code
(launch/prepare_song_data.py, launch/train_song.py). Running it again resumes both; SIGTERM
stops it (status 75 once training checkpointed). Bad input ends in one error line and status 1.
"""

import os

from absl import flags

from lora_jax import cli
from lora_jax.studio import song_jobs

_CONFIG = flags.DEFINE_string("config", None, "The fork's train_config.yaml.")
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DEFAULTS = cli.define_config(
    os.path.join(_ROOT, "configs", "song_lm.py"), "The song_lm config the YAML is read over.",
    name="defaults")
flags.mark_flags_as_required(["config"])


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  return song_jobs.prepare_and_train(_CONFIG.value, _DEFAULTS.value)


if __name__ == "__main__":
  cli.run(main, "prepare_and_train_song")
