r"""python launch/train.py --config=configs/song_lm.py --config.data.path=... --workdir=runs/song_lm

LoRA (or full) fine-tuning of SongGeneration's LM (`lora_jax/families/song_lm.py`) on windows of
songs' [3, T] codes with lyrics and style tokens.

Variants (`--config=configs/song_lm.py:<variant>`):
  (none)  the model sizes of the fork's train_config.yaml `model` overrides (dim 1536, 24 heads,
          24 layers, intermediate 6144; num_layers_sub and the text vocabulary are not stated
          there: set them to the checkpoint's), 20 s windows at 25 Hz.
  tiny    a 1+1-layer, 32-wide model on synthetic windows: seconds on a CPU (tests).
  full    full fine-tuning instead of LoRA.
"""

import ml_collections

from lora_jax.models.song import delay_pattern


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The song_lm training config; `arg` picks a variant."""
  variant = arg or "base"
  if variant not in ("base", "tiny", "full"):
    raise ValueError(f"unknown variant {variant!r} of configs/song_lm.py: base, tiny or full")
  config = ml_collections.ConfigDict()
  config.family = "song_lm"  # lora_jax.families registry name
  config.name = "song_lm_lora"  # recorded in the exported adapter

  config.model = ml_collections.ConfigDict()
  config.model.code_size = 16384  # codes; + end of sequence + the pattern's special token
  config.model.dim = 1536
  config.model.intermediate_size = 6144
  config.model.num_heads = 24
  config.model.num_layers = 24
  config.model.num_layers_sub = 12  # the original's default; check the checkpoint
  config.model.text_vocab_size = 151659  # Qwen2's 151646 + the 13 section tags (check it)
  config.model.frames = 500  # code frames per window (20 s at 25 Hz)
  config.model.lyrics_len = 300  # the original's description max_len
  config.model.style_len = 300
  config.model.prompt_len = 0  # reference-audio frames; > 0 with prompt_audio in prepend
  config.model.delays = delay_pattern.DELAYS
  config.model.prepend = ("description", "type_info")
  config.model.code_depth = 3
  config.model.rope_theta = 100000.0
  config.model.rope_theta_sub = 500000.0

  config.lora = ml_collections.ConfigDict()
  config.lora.rank = 8
  config.lora.alpha = 16.0  # scale = alpha / rank
  config.lora.dropout = 0.05  # on the adapter's input
  config.lora.module_dropout = 0.0  # probability of skipping an adapted module in a step
  config.lora.target_modules = ("q_proj", "k_proj", "v_proj", "o_proj")  # the fork's targets
  config.lora.include = ()  # regexes over module paths, added to target_modules
  config.lora.exclude = ()  # regexes removing modules again
  config.lora.rank_pattern = ()  # ((regex, rank), ...): first match wins
  config.lora.alpha_pattern = ()  # ((regex, alpha), ...)
  config.lora.use_rslora = False  # scale = alpha / sqrt(rank)
  config.lora.init = "zeros"  # B = 0, A kaiming-uniform (PEFT); or 'gaussian'
  config.lora.use_dora = False  # DoRA: also learn a per-output magnitude (PEFT's use_dora)

  config.opt = ml_collections.ConfigDict()
  config.opt.learning_rate = 1e-3  # peak
  config.opt.warmup_steps = 100  # linear from 0
  config.opt.decay = "cosine"  # 'cosine', 'linear' or 'constant'
  config.opt.final_lr_fraction = 0.1  # end of decay, as a fraction of the peak
  config.opt.weight_decay = 0.01  # AdamW, on >= 2-D parameters only
  config.opt.b1 = 0.9
  config.opt.b2 = 0.999
  config.opt.eps = 1e-8
  config.opt.clip_norm = 1.0  # global-norm clipping; 0 turns it off
  config.opt.grad_accum_steps = 1  # micro-batches per optimiser step
  config.opt.lr_groups = ()  # ((regex over trainable paths, lr multiplier), ...)

  config.data = ml_collections.ConfigDict()
  config.data.path = ""  # .npz with the song_lm family's arrays (lora_jax/families/song_lm.py)
  config.data.val_path = ""  # '' holds out val_fraction of data.path
  config.data.val_fraction = 0.1
  config.data.synthetic_examples = 0  # > 0 trains on synthetic windows instead of data.path
  config.data.batch_size = 32  # examples per optimiser step, all devices
  config.data.eval_batch_size = 32

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
  config.training.seed = 0  # data order, initialisation, dropout
  config.training.precision = "float32"  # 'float32', 'bfloat16' or 'float16' (loss-scaled)
  config.training.base_dtype = "float32"  # frozen base storage: 'float32' or 'bfloat16'
  config.training.base_params = ""  # Flax safetensors of the base; '' = random (smoke runs)
  config.training.parent_adapter = ""  # .lora this adapter is trained on top of (child)
  config.training.eval_every = 250  # steps; also at each epoch end
  config.training.patience = 0  # evaluations without improvement before stopping; 0 = never
  config.training.log_every = 50  # steps per CSV/TensorBoard/console line
  config.training.max_nonfinite_in_a_row = 20  # skipped steps in a row that stop the run
  config.training.quantize = ""  # QLoRA: base kernels 'int8', 'int8_block', 'nf4'; '' none
  config.training.allow_changed_config = False  # resume a checkpoint written with other settings
  config.training.relora_every = 0  # ReLoRA: fold the adapter into the base every N steps; 0 off
  config.training.relora_warmup = 0  # ReLoRA: steps of learning-rate re-warm after each fold
  config.training.init_adapter = ""  # .lora the adapter starts from (same modules and ranks)

  if variant == "tiny":
    config.name = "song_lm_tiny"
    config.model.code_size = 64
    config.model.dim = 32
    config.model.intermediate_size = 64
    config.model.num_heads = 4
    config.model.num_layers = 1
    config.model.num_layers_sub = 1
    config.model.text_vocab_size = 32
    config.model.frames = 16
    config.model.lyrics_len = 4
    config.model.style_len = 2
    config.model.delays = (0, 2, 2)
    config.lora.rank = 4
    config.lora.alpha = 8.0
    config.lora.dropout = 0.0
    config.opt.learning_rate = 3e-2
    config.opt.warmup_steps = 2
    config.data.synthetic_examples = 128
    config.data.val_fraction = 0.125
    config.data.batch_size = 8
    config.data.eval_batch_size = 8
    config.ckpt.every_steps = 10
    config.training.steps = 20
    config.training.eval_every = 10
    config.training.log_every = 5
  if variant == "full":
    config.name = "song_lm_full"
    config.training.type = "full"
    config.opt.learning_rate = 1e-5
  return config
