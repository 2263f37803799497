r"""Lyrics + a description (+ reference audio) -> a WAV, from a song LM trained by train_song.py.

python launch/generate_song.py --run=training_output --lyrics=@lyrics.txt \
  --description="folk, fiddle, female vocal" --seconds=20 --seed=0 --output=song.wav

The model: --run (train_song's output folder), or --adapter (its PEFT folder, over the base it
records or --base), or --model (a whole model.pt). The same inputs and --seed give the same WAV.
Bad input ends in one error line and exit status 1, before anything is written
(lora_jax/song/generate.py).
"""

from absl import flags

from lora_jax import cli
from lora_jax.song import generate

_RUN = flags.DEFINE_string("run", "", "A launch/train_song.py output folder (paths.output_dir).")
_ADAPTER = flags.DEFINE_string("adapter", "", "A PEFT adapter folder written by train_song "
                               "(checkpoints/adapter).")
_BASE = flags.DEFINE_string("base", "", "The adapter's base (model.pt or Flax .safetensors); "
                            "default: the one it was trained over.")
_MODEL = flags.DEFINE_string("model", "", "A whole model: model.pt (full fine-tuning's, or a "
                             "merge) with train_song's song_model.json beside it.")
_CODEC = flags.DEFINE_string("codec", "", "The codec .safetensors the training songs were "
                             "tokenized with; default: where training found it.")
_LYRICS = flags.DEFINE_string("lyrics", None, "Lyrics with section tags ([verse] ...), or @file.")
_DESCRIPTION = flags.DEFINE_string("description", "", "The style description.")
_PROMPT = flags.DEFINE_string("prompt_audio", "", "Reference audio (WAV, FLAC, ...), for a model "
                              "with the prompt_audio condition.")
_SECONDS = flags.DEFINE_float("seconds", 10.0, "Length at most (25 code frames a second); the "
                              "model may end the song earlier.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed: the same seed, the same WAV.")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Sampling temperature of the mixed stream "
                                  "(0 = greedy).")
_TOP_K = flags.DEFINE_integer("top_k", 50, "Sample the mixed stream from the top k codes.")
_CFG = flags.DEFINE_float("cfg_coef", 1.5, "Classifier-free guidance scale (1 = none).")
_WEIGHT = flags.DEFINE_float("adapter_weight", 1.0, "Multiplier of the adapter's trained scale.")
_OUTPUT = flags.DEFINE_string("output", None, "The WAV to write.")
flags.mark_flags_as_required(["lyrics", "output"])


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  generate.generate(generate.Request(
      output=_OUTPUT.value, lyrics=_LYRICS.value,
      description=_DESCRIPTION.value, run=_RUN.value, adapter=_ADAPTER.value,
      model=_MODEL.value, base=_BASE.value, codec=_CODEC.value, prompt_audio=_PROMPT.value,
      seconds=_SECONDS.value, seed=_SEED.value, temperature=_TEMPERATURE.value,
      top_k=_TOP_K.value, cfg_coef=_CFG.value, adapter_weight=_WEIGHT.value))


if __name__ == "__main__":
  cli.run(main, "generate_song")
