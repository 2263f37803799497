r"""python launch/train_base.py --config=configs/base_model.py --packs=style_packs/essen_folk,style_packs/baroque_chorale --output-dir=checkpoints/base_model

The base MusicTransformer the style adapters sit on: its size and its full training on the
train splits of the given style packs (validated on their validation splits). Writes
`<output-dir>/base_model.safetensors` (Flax weights; the model size in its metadata), `vocab.json`
beside it, and the training run (checkpoints, metrics) in `<output-dir>/run/`. Rerunning the same
command resumes.

Variants (`--config=configs/base_model.py:<variant>`):
  (none)  ~1.72M parameters, 128 wide, 8 layers, rotary positions, 1,024-token windows with
          augmented copies: the base shipped in assets/base_model/ (its README has the packs and
          the command).
  tiny    32 wide, 1 layer, 32-token windows: for tests.
"""

import ml_collections

from lora_jax.data import midi_tokenizer


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The base-model config; `arg` picks a variant."""
  variant = arg or "base"
  if variant not in ("base", "tiny"):
    raise ValueError(f"unknown variant {variant!r} of configs/base_model.py: base or tiny")
  config = ml_collections.ConfigDict()

  config.model = ml_collections.ConfigDict()
  # The default tokenizer's vocabulary (561 tokens); checked against it when training starts.
  config.model.vocab_size = midi_tokenizer.MidiTokenizer(
      midi_tokenizer.MidiTokenizerConfig()).vocab_size
  # Widths stay multiples of 64 so that QLoRA's NF4 blocks of 64 quantise every dense kernel.
  config.model.d_model = 128
  config.model.n_heads = 4
  config.model.n_layers = 8
  config.model.d_ff = 512
  config.model.max_len = 1024  # prompt + generated tokens
  config.model.dropout = 0.1
  # Rotary, not a learned table: in 1,024-token windows a learned table left the base guessing
  # where the next note starts (docs/base_rhythm.md).
  config.model.positions = "rotary"

  config.data = ml_collections.ConfigDict()
  config.data.seq_len = 1024  # tokens per training window (BOS included)
  config.data.cache_dir = ""  # token windows cached by content; "": <first pack>/.windows

  config.opt = ml_collections.ConfigDict()
  config.opt.decay = "cosine"
  config.opt.final_lr_fraction = 0.1
  config.opt.b1 = 0.9
  config.opt.b2 = 0.98
  config.opt.eps = 1e-8
  config.opt.clip_norm = 1.0

  config.run = ml_collections.ConfigDict()
  config.run.log_every = 25
  config.run.keep_last = 2
  config.run.max_nonfinite_in_a_row = 20
  # True resumes a checkpoint written with other settings (a changed learning rate or batch size
  # is refused by default, naming it); the differences are logged. The model and LoRA shape
  # never change on resume.
  config.run.allow_changed_config = False

  config.training = ml_collections.ConfigDict()
  config.training.epochs = 5  # over originals and copies: 1,293 steps, 45 min on 2 cores
  config.training.batch_size = 8
  config.training.learning_rate = 2e-3  # peak
  config.training.warmup_fraction = 0.05
  config.training.weight_decay = 0.01
  config.training.eval_every = 517  # steps (two epochs of the shipped data); 0: at each epoch end
  config.training.ckpt_every = 0  # steps; 0: at each evaluation
  config.training.seed = 0

  # Copies of each training window with other dynamics and instruments (hierarchy/augment.py), so
  # that a user's velocities and programs are tokens the base has read.
  config.augment = ml_collections.ConfigDict()
  config.augment.copies = 1  # beside each original window (an hour of 2 CPU cores: one pass)
  config.augment.seed = 0
  config.augment.velocity_centre = (2, 14)  # bins of 8 MIDI velocities: ~20..115
  config.augment.velocity_spread = (0.5, 1.5)  # on the window's own dynamics
  config.augment.velocity_ramp = 4.0  # bins, start to end of a window
  config.augment.velocity_jitter = 1.5  # bins, per-note noise (largest standard deviation)
  config.augment.program_remap = 0.75  # share of copies whose programs change
  config.augment.concat_short = True  # short pieces share a window instead of padding

  if variant == "tiny":
    config.model.update(d_model=32, n_heads=4, n_layers=1, d_ff=64, max_len=64, dropout=0.0)
    config.data.seq_len = 32
    config.run.log_every = 1
    config.training.update(epochs=2, batch_size=8, learning_rate=1e-2, warmup_fraction=0.0)
    config.training.eval_every = 0
    config.augment.update(copies=0, concat_short=False)  # windows as the packs give them
  return config
