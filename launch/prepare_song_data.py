r"""WAV files + metadata.jsonl -> the prepared folder launch/train_song.py trains on.

python launch/prepare_song_data.py --config=training/train_config.yaml

Reads `paths.metadata_path` (lines of {path, gt_lyric, descriptions, idx}), fits the default
audio codec on the songs (or loads `paths.audio_tokenizer_path`), and writes `{idx}.pt` token
files and `manifest.jsonl` into `paths.prepared_data_dir` (lora_jax/song/prepare_audio.py).
Running it again finishes an interrupted run. Bad rows are reported and the rest prepares; bad
settings end in one error line and exit status 1.
"""

import os

from absl import flags

from lora_jax import cli
from lora_jax.song import prepare_audio

_CONFIG = flags.DEFINE_string("config", None, "The fork's train_config.yaml.")
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DEFAULTS = cli.define_config(
    os.path.join(_ROOT, "configs", "song_lm.py"), "The song_lm config the YAML is read over "
    "(model.code_size).", name="defaults")
flags.mark_flags_as_required(["config"])


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  prepare_audio.run(_CONFIG.value, _DEFAULTS.value)


if __name__ == "__main__":
  cli.run(main, "prepare_song_data")
