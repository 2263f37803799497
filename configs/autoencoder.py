r"""python launch/train_autoencoder.py --config=configs/autoencoder.py --audio-dir=wavs --workdir=runs/ae

Trains a small Oobleck autoencoder (Stable Audio's, `lora_jax/families/autoencoder.py`) on
segments of a folder of WAV files; the run writes `autoencoder.safetensors` (the original's state
dict) and `model_config.json` (the original's autoencoder config) for `launch/encode_latents.py`
and `launch/decode_latents.py`. Rerunning the same command resumes.

Variants (`--config=configs/autoencoder.py:<variant>`):
  (none)  mono 8 kHz, 8 wide, strides 4x4x4x2 (128 samples per latent frame: 62.5 Hz), 16
          latent channels, 0.26 s segments: small enough to train on a shared 2-core CPU in
          minutes (the audio proof of docs/loraw.md). Stable Audio Open's is 128 wide, 64 latent
          channels, 2048 hop, 44.1 kHz stereo.
  tiny    8 wide, two blocks (hop 16), 4 latent channels, 512-sample segments of synthetic
          tones: seconds on a CPU (tests).
"""

import ml_collections

from lora_jax.train import config_groups


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The autoencoder training config; `arg` picks a variant."""
  variant = arg or "base"
  if variant not in ("base", "tiny"):
    raise ValueError(f"unknown variant {variant!r} of configs/autoencoder.py: base or tiny")
  config = ml_collections.ConfigDict()
  config.family = "autoencoder"  # lora_jax.families registry name
  config.name = "oobleck"

  config.model = ml_collections.ConfigDict()
  config.model.sample_rate = 8000  # Hz; WAV files are resampled to it
  config.model.io_channels = 1  # mono
  config.model.channels = 8  # base width of encoder and decoder
  config.model.c_mults = (1, 2, 4, 8)  # widths per block: 8, 16, 32, 64
  config.model.strides = (4, 4, 4, 2)  # 128 samples per latent frame
  config.model.latent_dim = 16  # latent channels (the DiT's io_channels)
  config.model.use_snake = True  # SnakeBeta, as Stable Audio Open
  config.model.segment_samples = 2048  # 16 latent frames (0.26 s) per training example
  config.model.stft_sizes = (1024, 512, 256, 128, 64)  # multi-resolution STFT loss
  config.model.l1_weight = 1.0  # waveform L1 (keeps phase honest where STFT ignores it)
  config.model.kl_weight = 1e-4  # stable-audio-tools' VAE recipes' weight

  # Read only by LoRA runs; the autoencoder trains whole (training.type full), and has no Dense.
  config.lora = config_groups.lora()
  config.opt = config_groups.opt(learning_rate=1e-3, warmup_steps=20, decay="cosine",
                                 final_lr_fraction=0.1, weight_decay=0.0, clip_norm=1.0)
  config.data = config_groups.data(batch_size=8, eval_batch_size=8, val_fraction=0.1)
  config.ckpt = config_groups.ckpt(every_steps=100)
  config.mesh = config_groups.mesh()
  config.training = config_groups.training(type="full", steps=600, seed=0, eval_every=100,
                                           log_every=20)

  if variant == "tiny":
    config.name = "oobleck_tiny"
    config.model.channels = 8
    config.model.c_mults = (1, 2)
    config.model.strides = (4, 4)
    config.model.latent_dim = 4
    config.model.segment_samples = 512
    config.model.stft_sizes = (256, 64)
    config.opt.warmup_steps = 2
    config.data.synthetic_examples = 48
    config.data.val_fraction = 0.25
    config.ckpt.every_steps = 4
    config.training.steps = 8
    config.training.eval_every = 4
    config.training.log_every = 2
  return config
