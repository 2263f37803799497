r"""Generate audio with Stable Audio's DiT and a LoRAW adapter at a multiplier.

python launch/generate_loraw.py --model-config=model_config.json --pretrained-ckpt-path=model.ckpt \
  --autoencoder-ckpt=model.ckpt --t5-dir=t5-base --lora-ckpt-path=runs/loraw/lora.ckpt \
  --multiplier=1 --prompt="solo violin" --seconds-total=10 --output=out.wav

`--multiplier=0` is the base model bit for bit; the same seed gives the same file. A `.wav`
output is decoded by the model config's pretransform (the Oobleck autoencoder) with the weights
of --autoencoder-ckpt (an autoencoder file, or the whole Stable Audio checkpoint), 32-bit float
at the config's sample rate; a `.npy` output is the latents [C, T], the only output for a model
config without a pretransform (lora_jax/loraw/generation.py). Without --t5-dir the prompt goes
through the model's byte-token embedding, not T5.
"""

from absl import flags
from absl import logging

from lora_jax import cli
from lora_jax.loraw import generation, model_config

_MODEL_CONFIG = flags.DEFINE_string("model_config", None, "Stable Audio model config JSON.")
_BASE = flags.DEFINE_string("pretrained_ckpt_path", None,
                            "Base: an original checkpoint or this project's Flax file.")
_LORA = flags.DEFINE_string("lora_ckpt_path", "", "Adapter: a LoRAW file or a .lora; '' none.")
_MULTIPLIER = flags.DEFINE_float("multiplier", None,
                                 "Adapter strength; default the model config's lora.multiplier.")
_PROMPT = flags.DEFINE_string("prompt", "", "Text prompt.")
_START = flags.DEFINE_float("seconds_start", 0.0, "seconds_start conditioning.")
_TOTAL = flags.DEFINE_float("seconds_total", 10.0, "seconds_total conditioning.")
_LENGTH = flags.DEFINE_integer("latent_length", None,
                               "Latent frames; default from --seconds-total and the pretransform.")
_STEPS = flags.DEFINE_integer("steps", 100, "Sampler steps (DPM-Solver++(2M) SDE).")
_CFG = flags.DEFINE_float("cfg_scale", 7.0, "Classifier-free guidance scale.")
_SEED = flags.DEFINE_integer("seed", 0, "Noise seed.")
_AUTOENCODER = flags.DEFINE_string("autoencoder_ckpt", "", "Autoencoder weights for a .wav output "
                                   "(may be the whole Stable Audio checkpoint).")
_T5 = flags.DEFINE_string("t5_dir", "", "The user's T5 folder (config.json, tokenizer.json, "
                          "model.safetensors); '' uses the byte-token embedding (not T5).")
_OUTPUT = flags.DEFINE_string("output", None, "Output: .wav (audio, needs the config's "
                              "pretransform and --autoencoder-ckpt) or .npy (latents [C, T]).")
flags.mark_flags_as_required(["model_config", "pretrained_ckpt_path", "output"])


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  result = generation.run_command(
      model_config.load(_MODEL_CONFIG.value), base_path=_BASE.value, lora_path=_LORA.value,
      multiplier=_MULTIPLIER.value, prompt=_PROMPT.value, seconds_start=_START.value,
      seconds_total=_TOTAL.value, latent_length=_LENGTH.value, steps=_STEPS.value,
      cfg_scale=_CFG.value, seed=_SEED.value, output=_OUTPUT.value, t5_dir=_T5.value,
      autoencoder_path=_AUTOENCODER.value)
  logging.info("%s", result)


if __name__ == "__main__":
  cli.run(main, "generate_loraw")
