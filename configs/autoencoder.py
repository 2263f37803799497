r"""python launch/train_autoencoder.py --config=configs/autoencoder.py --audio-dir=wavs --workdir=runs/ae

Trains a small Oobleck autoencoder (Stable Audio's, `lora_jax/families/autoencoder.py`) on
segments of a folder of WAV files; the run writes `autoencoder.safetensors` (the original's state
dict) and `model_config.json` (the original's autoencoder config) for `launch/encode_latents.py`
and `launch/decode_latents.py`. Rerunning the same command resumes.

Variants (`--config=configs/autoencoder.py:<variant>`):
  (none)  mono 8 kHz, 16 wide, strides 4x4x4 (64 samples per latent frame: 125 Hz), 32
          latent channels, 0.26 s segments, waveform L1 weighted 30: small enough to train on a
          shared 2-core CPU (the audio proof of docs/loraw.md, whose diagnosis explains the
          sizes: 8 wide at hop 128 with 16 channels decoded one spectrum for every input).
          Stable Audio Open's is 128 wide, 64 latent channels, 2048 hop, 44.1 kHz stereo.
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
  config.model.channels = 16  # base width of encoder and decoder
  config.model.c_mults = (1, 2, 4)  # widths per block: 16, 32, 64
  config.model.strides = (4, 4, 4)  # 64 samples per latent frame
  config.model.latent_dim = 32  # latent channels (the DiT's io_channels)
  config.model.use_snake = True  # SnakeBeta, as Stable Audio Open
  config.model.segment_samples = 2048  # 16 latent frames (0.26 s) per training example
  config.model.stft_sizes = (1024, 512, 256, 128, 64)  # multi-resolution STFT loss
  # Waveform L1, weighted so it is not negligible next to the STFT terms (~0.03 x 30 against
  # ~2.5): it rewards any dependence of the output on the latents from the first steps.
  config.model.l1_weight = 30.0
  config.model.kl_weight = 1e-4  # stable-audio-tools' VAE recipes' weight

  # Read only by LoRA runs; the autoencoder trains whole (training.type full), and has no Dense.
  config.lora = config_groups.lora()
  config.opt = config_groups.opt(learning_rate=1e-3, warmup_steps=50, decay="cosine",
                                 final_lr_fraction=0.1, weight_decay=0.0, clip_norm=1.0)
  config.data = config_groups.data(batch_size=8, eval_batch_size=8, val_fraction=0.1)
  config.ckpt = config_groups.ckpt(every_steps=100)
  config.mesh = config_groups.mesh()
  config.training = config_groups.training(type="full", steps=1500, seed=0, eval_every=250,
                                           log_every=20)

  if variant == "tiny":
    config.name = "oobleck_tiny"
    config.model.channels = 8
    config.model.l1_weight = 1.0
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
