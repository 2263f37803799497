r"""python launch/train_separator.py --config=configs/separator.py --workdir=runs/separator

The vocal/accompaniment mask model (`lora_jax/families/separator.py`) trained in full on stems
the project renders itself (`lora_jax/audio/separator/stem_set.py`), written to
assets/separator/separator.safetensors (what the stems path and the song data preparation load).

Variants (`--config=configs/separator.py:<variant>`):
  (none)  the shipped model: 170 pieces, 1 000 steps (about 10 minutes on a quiet 2-core CPU,
          the rendering of the stems about 8 more the first time).
  tiny    a 16-wide model on the family's synthetic tones and noise: seconds (tests).
"""

import ml_collections

from lora_jax.train import config_groups


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The separator training config; `arg` picks a variant."""
  variant = arg or "base"
  if variant not in ("base", "tiny"):
    raise ValueError(f"unknown variant {variant!r} of configs/separator.py: base or tiny")
  config = ml_collections.ConfigDict()
  config.family = "separator"  # lora_jax.families registry name
  config.name = "separator"  # recorded in the weights file

  config.model = ml_collections.ConfigDict()
  config.model.n_fft = 1024  # 46 ms at 22050 Hz: 513 bins 21.5 Hz apart
  config.model.hop = 256
  config.model.segment_samples = 256 * 128  # 1.5 s windows, 129 frames
  config.model.hidden = 192
  config.model.n_layers = 4  # dilations 1, 2, 4, 8: 15 frames of context each side
  config.model.kernel = 3
  config.model.gain_db = 6.0  # vocal level drawn in +-6 dB of the 0 dB balance

  config.stems = ml_collections.ConfigDict()
  config.stems.dir = ".cache/separator_stems"  # rendered stems, cached per piece
  config.stems.n_pieces = 170  # chorales and Renaissance pieces, split by piece
  config.stems.segments_per_piece = 12  # random 1.5 s windows per train/val piece
  config.stems.out = "assets/separator/separator.safetensors"

  config.lora = config_groups.lora()  # unused: training.type is 'full'
  config.opt = config_groups.opt(learning_rate=2e-3, warmup_steps=50, weight_decay=0.0)
  config.data = config_groups.data(batch_size=16, eval_batch_size=16)  # paths set by the program
  config.ckpt = config_groups.ckpt(every_steps=250)
  config.mesh = config_groups.mesh()
  config.training = config_groups.training(type="full", steps=1000, eval_every=100,
                                           log_every=25, seed=0)

  if variant == "tiny":
    config.name = "separator_tiny"
    config.model.segment_samples = 256 * 16
    config.model.hidden = 16
    config.model.n_layers = 2
    config.stems.n_pieces = 3
    config.stems.segments_per_piece = 4
    config.data.batch_size = 8  # the tests' 8 fake devices
    config.data.eval_batch_size = 8
    config.opt.learning_rate = 1e-2
    config.opt.warmup_steps = 1
    config.training.steps = 4
    config.training.eval_every = 2
  return config
