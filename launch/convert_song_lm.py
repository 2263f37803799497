"""SongGeneration's model.pt <-> Flax-native safetensors, strictly, in the direction the input's
suffix says.

python launch/convert_song_lm.py --config=configs/song_lm.py --input=ckpt/model.pt \
  --output=song_base.safetensors        # then --config.training.base_params=song_base.safetensors
python launch/convert_song_lm.py --config=configs/song_lm.py --input=merged.safetensors \
  --output=model.pt                     # loads in the original's generate.py
The model sizes are the config's `model` group; a checkpoint of another size is refused with the
keys and shapes that differ.
"""

from absl import flags, logging
from ml_collections import config_flags

from lora_jax import cli
from lora_jax.families import song_lm as song_family
from lora_jax.interop import song_lm_weights
from lora_jax.models.song import lm as song_lm
from lora_jax.train import config as config_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "song_lm training config, e.g. "
                                          "configs/song_lm.py")
_INPUT = flags.DEFINE_string("input", None, "model.pt (original) or .safetensors (Flax) to read")
_OUTPUT = flags.DEFINE_string("output", None, ".safetensors (Flax) or .pt (original) to write")
_IGNORE = flags.DEFINE_bool("ignore_other_keys", False, "skip model.pt keys outside 'audiolm.' "
                            "instead of refusing the file")
flags.mark_flags_as_required(["config", "input", "output"])


def main(argv):
  del argv
  model = config_lib.from_mapping(song_family.SongConfig, _CONFIG.value.model, "config.model")
  abstract = song_lm.abstract_params(model.lm_config("float32"))
  direction = song_lm_weights.convert(_INPUT.value, _OUTPUT.value, abstract,
                                      ignore_other_keys=_IGNORE.value)
  logging.info("wrote %s from %s (%s)", _OUTPUT.value, _INPUT.value, direction)


if __name__ == "__main__":
  cli.run(main, "convert_song_lm")
