r"""Train an instrument LoRA adapter on the DUV base bundle and write it beside the base.

python launch/train_duv_lora.py --config=configs/duv/guitar.py --workdir=runs/duv_guitar

The config is configs/duv/base.py's lora_config for one instrument; the command line is
lora_jax.duv.command's.
"""

from lora_jax.duv import command

if __name__ == "__main__":
  command.main("lora", "train_duv_lora")
