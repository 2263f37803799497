r"""Train the universal DUV base (the PhraseTransformer, in full) and write its bundle folder.

python launch/train_duv.py --config=configs/duv/base.py --workdir=runs/duv_base

The config is the shared loop's plus a `duv` group (lora_jax.duv.training.DuvData); the command
line is lora_jax.duv.command's.
"""

from lora_jax.duv import command

if __name__ == "__main__":
  command.main("full", "train_duv")
