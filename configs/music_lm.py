r"""python launch/train.py --config=configs/music_lm.py --config.data.path=data/lm_windows.npz --workdir=runs/music_lm

LoRA fine-tuning of the MusicTransformer language model on windows of MIDI event tokens.

Variants (`--config=configs/music_lm.py:<variant>`):
  (none)  a 4-layer, 256-wide model on `data.path` (an .npz of token windows; required).
  tiny    a 2-layer, 32-wide model on synthetic Markov-chain tokens: seconds on a CPU (tests).
  full    full fine-tuning instead of LoRA.
Single values: `--config.lora.rank=16`, `--config.training.steps=5000`.
"""

import ml_collections

from lora_jax.train import config_groups


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The music_lm training config; `arg` picks a variant."""
  variant = arg or "base"
  if variant not in ("base", "tiny", "full"):
    raise ValueError(f"unknown variant {variant!r} of configs/music_lm.py: base, tiny or full")
  config = ml_collections.ConfigDict()
  config.family = "music_lm"  # lora_jax.families registry name
  config.name = "music_lm_lora"  # recorded in the exported adapter

  config.model = ml_collections.ConfigDict()
  config.model.vocab_size = 512  # MIDI event vocabulary
  config.model.d_model = 256
  config.model.n_heads = 4
  config.model.n_layers = 4
  config.model.d_ff = 1024
  config.model.max_len = 512  # positions the base was trained with
  config.model.dropout = 0.1  # the base model's own dropout while training
  config.model.seq_len = 256  # tokens per training window (<= max_len)
  config.model.pooled_targets = ()  # token ids scored as one class (MIDI Program tokens)
  config.model.remat = False  # recompute blocks in the backward pass: less memory, more FLOPs
  config.model.positions = "learned"  # or "rotary": queries and keys rotated, no pos_emb table

  config.lora = config_groups.lora()
  config.opt = config_groups.opt()
  config.data = config_groups.data()  # data.path: .npz, tokens int32 and mask float32 [N, seq_len]
  config.ckpt = config_groups.ckpt()
  config.mesh = config_groups.mesh()
  config.training = config_groups.training()

  if variant == "tiny":
    config.name = "music_lm_tiny"
    config.model.vocab_size = 32
    config.model.d_model = 32
    config.model.n_heads = 4
    config.model.n_layers = 2
    config.model.d_ff = 64
    config.model.max_len = 32
    config.model.dropout = 0.0
    config.model.seq_len = 16
    config.lora.rank = 4
    config.lora.alpha = 8.0
    config.lora.dropout = 0.0
    config.lora.target_modules = ("q_proj", "v_proj", "ff.in", "ff.out", "head")
    config.opt.learning_rate = 3e-2
    config.opt.warmup_steps = 2
    config.data.synthetic_examples = 256
    config.data.val_fraction = 0.125
    config.data.batch_size = 16
    config.data.eval_batch_size = 16
    config.ckpt.every_steps = 10
    config.training.steps = 20
    config.training.eval_every = 10
    config.training.log_every = 5
  if variant == "full":
    config.name = "music_lm_full"
    config.training.type = "full"
    config.opt.learning_rate = 1e-4
  return config
