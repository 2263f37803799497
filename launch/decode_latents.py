r"""Stable Audio latents (.npy [latent_dim, frames]) to WAV with the Oobleck autoencoder.

python launch/decode_latents.py --model-config=model_config.json --autoencoder-ckpt=model.ckpt \
  --latents=latents --out-dir=decoded

One 32-bit float WAV per .npy (same relative path), at the model's sample rate; a clip with its
pre-encoding .json beside it is cut to its real frames.
"""

from absl import flags, logging

from lora_jax import cli
from lora_jax.data.dit import decode

_MODEL_CONFIG = flags.DEFINE_string("model_config", None, "Stable Audio model config JSON.")
_CKPT = flags.DEFINE_string("autoencoder_ckpt", None, "Weights: .ckpt, .safetensors or .pt.")
_PREFIX = flags.DEFINE_string("prefix", None, "Key prefix of the autoencoder in the weight file; "
                              "detected when unset.")
_LATENTS = flags.DEFINE_string("latents", None, "A .npy latent file or a folder of them.")
_OUT = flags.DEFINE_string("out_dir", None, "Folder for the WAV files.")
flags.mark_flags_as_required(["model_config", "autoencoder_ckpt", "latents", "out_dir"])


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  n = decode.decode_latents(decode.DecodeSettings(
      model_config=_MODEL_CONFIG.value, weights=_CKPT.value, latents=_LATENTS.value,
      out_dir=_OUT.value, prefix=_PREFIX.value))
  logging.info("wrote %d WAV files to %s", n, _OUT.value)


if __name__ == "__main__":
  cli.run(main, "decode_latents")
