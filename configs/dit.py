r"""python launch/train.py --config=configs/dit.py --config.data.path=latents.npz --workdir=runs/dit

LoRA (or full) fine-tuning of Stable Audio's diffusion transformer (`lora_jax/families/dit.py`) on
pre-encoded latents with the v-objective. `launch/train_loraw.py` fills this config from a Stable
Audio model config JSON and LoRAW's flags; this file is what it starts from.

Variants (`--config=configs/dit.py:<variant>`):
  (none)  Stable Audio Open's DiT (1536 wide, 24 layers, 64 latent channels), 1 s of latents
          (21.5 Hz frames); data.path required (an .npz of the family's arrays, see
          lora_jax/data/dit/pre_encoded.py).
  tiny    a 2-layer, 64-wide DiT on synthetic 4-channel latents: seconds on a CPU (tests).
  full    full fine-tuning instead of LoRA.
  tiny_full  tiny, fully fine-tuned.
"""

import ml_collections

from lora_jax.train import config_groups


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The dit training config; `arg` picks a variant."""
  variant = arg or "base"
  if variant not in ("base", "tiny", "full", "tiny_full"):
    raise ValueError(f"unknown variant {variant!r} of configs/dit.py: base, tiny, full or "
                     "tiny_full")
  config = ml_collections.ConfigDict()
  config.family = "dit"  # lora_jax.families registry name
  config.name = "dit_lora"  # recorded in the exported adapter

  config.model = ml_collections.ConfigDict()
  config.model.io_channels = 64  # latent channels (the autoencoder's latent_dim)
  config.model.embed_dim = 1536
  config.model.depth = 24
  config.model.num_heads = 24
  config.model.cond_token_dim = 768  # cross-attention token width
  config.model.global_cond_dim = 1536  # 2 numbers x cond_dim
  config.model.project_cond_tokens = False
  config.model.project_global_cond = True
  config.model.cond_dim = 768  # every conditioner's output width
  config.model.text_len = 128  # prompt tokens (the T5 conditioner's max_length)
  # 'embedding': a trainable byte-token embedding (no T5 files); 't5': data.path holds the frozen
  # T5's output per clip (`prompt` [text_len, t5_width], `prompt_mask`), as train_loraw.py
  # writes it with --t5-dir.
  config.model.text_encoder = "embedding"
  config.model.t5_width = 0  # the T5 encoder's d_model ('t5' only; t5-base: 768)
  config.model.t5_project_out = False  # the T5 conditioner's project_out option
  config.model.seconds_start_range = (0.0, 512.0)  # number conditioner min_val, max_val
  config.model.seconds_total_range = (0.0, 512.0)
  config.model.cross_attention_cond_ids = ("prompt", "seconds_start", "seconds_total")
  config.model.global_cond_ids = ("seconds_start", "seconds_total")
  config.model.latent_length = 22  # latent frames per example (about 1 s at 44.1 kHz / 2048)
  config.model.cfg_dropout = 0.1  # rows trained without cross-attention conditioning

  config.lora = config_groups.lora(
      rank=16, alpha=16.0, dropout=0.0,  # LoRAW's example config; its multiplier: see README
      target_modules=(),
      include=(r"(^|\.)transformer(\.|$)",))  # LoRAW's component whitelist ['transformer']
  # LoRAW's example lr, Adam (no weight decay), constant; no clipping (gradient_clip_val unset).
  config.opt = config_groups.opt(learning_rate=1e-4, decay="constant", final_lr_fraction=1.0,
                                 weight_decay=0.0, clip_norm=0.0)
  config.data = config_groups.data(  # data.path: .npz of lora_jax/data/dit/pre_encoded.py
      batch_size=8, eval_batch_size=8)
  config.ckpt = config_groups.ckpt()
  config.mesh = config_groups.mesh()
  config.training = config_groups.training(seed=42)  # the original's default seed

  if variant in ("tiny", "tiny_full"):
    config.name = "dit_tiny"
    config.model.io_channels = 4
    config.model.embed_dim = 64
    config.model.depth = 2
    config.model.num_heads = 2  # head size 32: the original's smallest rotary size
    config.model.cond_token_dim = 32
    config.model.global_cond_dim = 64
    config.model.cond_dim = 32
    config.model.text_len = 12
    config.model.seconds_start_range = (0.0, 16.0)
    config.model.seconds_total_range = (0.0, 16.0)
    config.model.latent_length = 16
    config.lora.rank = 4
    config.lora.alpha = 4.0
    config.opt.learning_rate = 1e-2
    config.opt.warmup_steps = 2
    config.data.synthetic_examples = 64
    config.data.val_fraction = 0.125
    config.data.batch_size = 8
    config.data.eval_batch_size = 8
    config.ckpt.every_steps = 10
    config.training.steps = 20
    config.training.eval_every = 10
    config.training.log_every = 5
  if variant in ("full", "tiny_full"):
    config.name = "dit_full"
    config.training.type = "full"
    config.opt.learning_rate = 1e-5 if variant == "full" else 1e-3
  return config
