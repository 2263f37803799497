r"""Fold a train_song LoRA adapter into its base: one model.pt for generate_song.py --model.

python launch/merge_song_adapter.py --adapter=training_output/checkpoints/adapter \
  --output=merged/model.pt

The base is the one the adapter records (train_song's base.safetensors) or --base (the original's
model.pt or a Flax .safetensors with the same fingerprint). song_model.json is written beside the
output. Bad input ends in one error line and exit status 1, before anything is written
(lora_jax/song/merge.py).
"""

from absl import flags

from lora_jax import cli
from lora_jax.song import merge

_ADAPTER = flags.DEFINE_string("adapter", None, "A PEFT adapter folder written by train_song "
                               "(checkpoints/adapter).")
_BASE = flags.DEFINE_string("base", "", "The adapter's base (model.pt or Flax .safetensors); "
                            "default: the one it was trained over.")
_WEIGHT = flags.DEFINE_float("weight", 1.0, "Multiplier of the adapter's trained scale.")
_OUTPUT = flags.DEFINE_string("output", None, "The merged model: .pt (the original's) or Flax "
                              ".safetensors.")
flags.mark_flags_as_required(["adapter", "output"])


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  merge.merge(_ADAPTER.value, _OUTPUT.value, base=_BASE.value, weight=_WEIGHT.value)


if __name__ == "__main__":
  cli.run(main, "merge_song_adapter")
