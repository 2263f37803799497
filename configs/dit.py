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
  config.model.text_encoder = "embedding"  # trainable byte-token embedding (no T5 yet)
  config.model.seconds_start_range = (0.0, 512.0)  # number conditioner min_val, max_val
  config.model.seconds_total_range = (0.0, 512.0)
  config.model.cross_attention_cond_ids = ("prompt", "seconds_start", "seconds_total")
  config.model.global_cond_ids = ("seconds_start", "seconds_total")
  config.model.latent_length = 22  # latent frames per example (about 1 s at 44.1 kHz / 2048)
  config.model.cfg_dropout = 0.1  # rows trained without cross-attention conditioning

  config.lora = ml_collections.ConfigDict()
  config.lora.rank = 16  # LoRAW's example config
  config.lora.alpha = 16.0  # scale = alpha / rank (LoRAW's multiplier is folded in: see README)
  config.lora.dropout = 0.0  # on the adapter's input
  config.lora.module_dropout = 0.0  # probability of skipping an adapted module in a step
  config.lora.target_modules = ()  # dotted-path suffixes of dense layers
  config.lora.include = (r"(^|\.)transformer(\.|$)",)  # LoRAW's component whitelist ['transformer']
  config.lora.exclude = ()  # regexes removing modules again
  config.lora.rank_pattern = ()  # ((regex, rank), ...): first match wins
  config.lora.alpha_pattern = ()  # ((regex, alpha), ...)
  config.lora.use_rslora = False  # scale = alpha / sqrt(rank)
  config.lora.init = "zeros"  # B = 0, A kaiming-uniform; or 'gaussian'
  config.lora.use_dora = False  # LoRAW's weight_decompose

  config.opt = ml_collections.ConfigDict()
  config.opt.learning_rate = 1e-4  # peak (LoRAW's example lr)
  config.opt.warmup_steps = 100  # linear from 0
  config.opt.decay = "constant"  # 'cosine', 'linear' or 'constant'
  config.opt.final_lr_fraction = 1.0  # end of decay, as a fraction of the peak
  config.opt.weight_decay = 0.0  # AdamW, on >= 2-D parameters only (LoRAW uses Adam)
  config.opt.b1 = 0.9
  config.opt.b2 = 0.999
  config.opt.eps = 1e-8
  config.opt.clip_norm = 0.0  # global-norm clipping (the original's gradient_clip_val); 0 off
  config.opt.grad_accum_steps = 1  # micro-batches per optimiser step (accum_batches)
  config.opt.lr_groups = ()  # ((regex over trainable paths, lr multiplier), ...)

  config.data = ml_collections.ConfigDict()
  config.data.path = ""  # .npz of the dit family's arrays (lora_jax/data/dit/pre_encoded.py)
  config.data.val_path = ""  # '' holds out val_fraction of data.path
  config.data.val_fraction = 0.1
  config.data.synthetic_examples = 0  # > 0 trains on synthetic latents instead of data.path
  config.data.batch_size = 8  # examples per optimiser step, all devices
  config.data.eval_batch_size = 8

  config.ckpt = ml_collections.ConfigDict()
  config.ckpt.every_steps = 500  # plus after each evaluation, on SIGTERM/SIGINT, at the end
  config.ckpt.keep_last = 2
  config.ckpt.keep_best = 1  # by validation loss
  config.ckpt.export = "best"  # at the end: 'best' (lowest validation loss) or 'final' params

  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1  # -1: the devices the other axes leave
  config.mesh.fsdp = 1
  config.mesh.model = 1

  config.training = ml_collections.ConfigDict()
  config.training.type = "lora"  # 'lora' or 'full'
  config.training.steps = 5000  # optimiser steps
  config.training.seed = 42  # the original's default seed
  config.training.precision = "float32"  # 'float32', 'bfloat16' or 'float16' (loss-scaled)
  config.training.base_dtype = "float32"  # frozen base storage: 'float32' or 'bfloat16'
  config.training.base_params = ""  # Flax safetensors of the base; '' = random (smoke runs)
  config.training.parent_adapter = ""  # .lora this adapter is trained on top of (child)
  config.training.quantize = ""  # QLoRA: base kernels 'int8', 'int8_block', 'nf4'; '' none
  config.training.eval_every = 250  # steps; also at each epoch end
  config.training.patience = 0  # evaluations without improvement before stopping; 0 = never
  config.training.log_every = 50  # steps per CSV/TensorBoard/console line
  config.training.max_nonfinite_in_a_row = 20  # skipped steps in a row that stop the run
  config.training.allow_changed_config = False  # resume a checkpoint written with other settings
  config.training.relora_every = 0  # ReLoRA: fold the adapter into the base every N steps; 0 off
  config.training.relora_warmup = 0  # ReLoRA: steps of learning-rate re-warm after each fold
  config.training.init_adapter = ""  # .lora the adapter starts from (same modules and ranks)

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
