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
from lora_jax.train import config_groups


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
  # Condition dropout in training, so that guidance has an unconditional model to push from: the
  # released base's config.yaml (classifier_free_guidance.training_dropout, attribute_dropout).
  config.model.cfg_dropout = 0.15  # a row loses every condition
  config.model.description_dropout = 0.0  # a row loses its lyrics
  config.model.type_info_dropout = 0.5  # a row loses its style text
  config.model.prompt_audio_dropout = 0.0  # a row loses its reference audio
  config.model.text_start_id = 1  # the text tokenizer's start and padding ids (a dropped text);
  config.model.text_pad_id = 0  # the byte-level default's, train_song sets the Qwen2 file's

  config.lora = config_groups.lora(
      target_modules=("q_proj", "k_proj", "v_proj", "o_proj"))  # the fork's targets
  config.opt = config_groups.opt()
  config.data = config_groups.data()  # data.path: .npz of lora_jax/families/song_lm.py's arrays
  config.ckpt = config_groups.ckpt()
  config.mesh = config_groups.mesh()
  config.training = config_groups.training()

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
