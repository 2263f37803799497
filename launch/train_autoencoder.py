r"""Train Stable Audio's Oobleck autoencoder on a folder of WAV files.

python launch/train_autoencoder.py --config=configs/autoencoder.py --audio-dir=wavs --workdir=runs/ae

Writes <workdir>/autoencoder.safetensors and <workdir>/model_config.json, which
launch/encode_latents.py and launch/decode_latents.py read (--model-config, --autoencoder-ckpt).
Running it again with the same --workdir resumes. Without --audio-dir the config's synthetic tones
are used (config.data.synthetic_examples). Bad input ends in one error line and exit status 1.
"""

import os

from absl import flags

from lora_jax import cli
from lora_jax.loraw import autoencoder_training
from lora_jax.train import exit_status

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIG = cli.define_config(os.path.join(_ROOT, "configs", "autoencoder.py"),
                            "Autoencoder training config (configs/autoencoder.py).")
_AUDIO = flags.DEFINE_string("audio_dir", "", "Folder of .wav files (searched recursively).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder: checkpoints, metrics, weights.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  result = autoencoder_training.run(_CONFIG.value, _AUDIO.value, _WORKDIR.value)
  return exit_status.of(result.status)


if __name__ == "__main__":
  cli.run(main, "train_autoencoder")
