r"""A folder of WAV files to Stable Audio latents: the pre-encoded data set the DiT trains on.

python launch/encode_latents.py --model-config=model_config.json --autoencoder-ckpt=model.ckpt \
  --audio-dir=wavs --out-dir=latents [--prompt="solo piano"] [--sample-size=0] [--sample --seed=1]

Writes <out-dir>/<wav path>.<clip>.npy latents with a .json beside each (seconds_start,
seconds_total, padding_mask, prompt): stable-audio-tools' pre_encoded format
(lora_jax/data/dit/encode.py says the details: resampling, channels, clip cutting).
The weights are an autoencoder alone or a whole Stable Audio checkpoint (its pretransform.model.).
A run stopped part-way continues where it stopped when run again.
"""

from absl import flags, logging

from lora_jax import cli
from lora_jax.data.dit import encode

_MODEL_CONFIG = flags.DEFINE_string("model_config", None, "Stable Audio model config JSON.")
_CKPT = flags.DEFINE_string("autoencoder_ckpt", None, "Weights: .ckpt, .safetensors or .pt.")
_PREFIX = flags.DEFINE_string("prefix", None, "Key prefix of the autoencoder in the weight file; "
                              "detected when unset.")
_AUDIO = flags.DEFINE_string("audio_dir", None, "Folder of .wav files (searched recursively).")
_OUT = flags.DEFINE_string("out_dir", None, "Folder for the latents.")
_SIZE = flags.DEFINE_integer("sample_size", -1, "Samples per clip; -1: the model config's "
                             "sample_size; 0: each file whole.")
_PROMPT = flags.DEFINE_string("prompt", None, "Prompt of WAVs without a .txt beside them.")
_SAMPLE = flags.DEFINE_bool("sample", False, "Draw from the VAE instead of taking its mean.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the draws (with --sample).")
flags.mark_flags_as_required(["model_config", "autoencoder_ckpt", "audio_dir", "out_dir"])


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  counts = encode.encode_folder(encode.EncodeSettings(
      model_config=_MODEL_CONFIG.value, weights=_CKPT.value, audio_dir=_AUDIO.value,
      out_dir=_OUT.value, prefix=_PREFIX.value,
      sample_size=None if _SIZE.value == 0 else _SIZE.value, prompt=_PROMPT.value,
      sample=_SAMPLE.value, seed=_SEED.value))
  logging.info("%d files, %d clips (%d already encoded) in %s", counts["files"], counts["clips"],
               counts["kept"], _OUT.value)


if __name__ == "__main__":
  cli.run(main, "encode_latents")
