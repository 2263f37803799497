r"""Why the proof's autoencoder did not learn: short runs of variants of its config, scored on
held-out audio (docs/loraw.md, "Diagnosing the autoencoder").

  python bench/loraw_autoencoder_probe.py --segments=.cache/loraw_proof/ae/segments.npz \
    --test_dir=.cache/loraw_proof/wavs/test --steps=300 --variants=old,gain,det,l1w

Each variant trains the `autoencoder` family's model and loss (lora_jax/families/autoencoder.py)
with Adam, global-norm clipping 1, warm-up then cosine to a tenth, batch 8 of the run's training
segments, times `gain` (clipped to [-1, 1]); then encodes (VAE mean) and decodes the first 4.1 s of
every held-out WAV and prints per instrument the mel SNR and the spectral centroid of the input
and of the decoded audio. A decoder that ignores its latents gives every instrument the same
decoded centroid. A sensitivity line before training: how much the encoder's mean varies over
time against the VAE's noise (softplus(0) ~ 0.69 at initialisation).
"""

import json
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lora_jax.audio import spectral
from lora_jax.data.dit import wav
from lora_jax.families import autoencoder as ae_family
from lora_jax.models.oobleck import model as oobleck

_SEGMENTS = flags.DEFINE_string("segments", None, "segments.npz of an autoencoder run.")
_TEST = flags.DEFINE_string("test_dir", None, "Held-out WAVs, one folder per instrument.")
_STEPS = flags.DEFINE_integer("steps", 300, "Training steps per variant.")
_VARIANTS = flags.DEFINE_list("variants", "old,gain,det,l1w", "Which variants, in order.")
RATE = 8000


def _config(channels=8, c_mults=(1, 2, 4, 8), strides=(4, 4, 4, 2), latent=16, l1=1.0,
            stft_sizes=(1024, 512, 256, 128, 64)):
  return ae_family.AutoencoderTrainConfig(
      sample_rate=RATE, io_channels=1, channels=channels, c_mults=c_mults, strides=strides,
      latent_dim=latent, use_snake=True, segment_samples=2048,
      stft_sizes=stft_sizes, l1_weight=l1, kl_weight=1e-4)


# name: (config, input gain, VAE noise in training, peak learning rate)
VARIANTS = {
    "old": (_config(), 1.0, True, 1e-3),  # the proof's first config
    "det": (_config(), 1.0, False, 1e-3),  # decoder reads the mean: no VAE noise
    "gain": (_config(), 8.0, True, 1e-3),  # louder input
    "wide": (_config(16, (1, 2, 4), (4, 4, 4), 32), 8.0, True, 1e-3),  # hop 64, 32 channels
    "wide_lr3e-4": (_config(16, (1, 2, 4), (4, 4, 4), 32), 2.5, True, 3e-4),
    "two_blocks_lr3e-3": (_config(16, (1, 2), (8, 8), 32), 2.5, True, 3e-3),
    "hop16": (_config(16, (1, 2), (4, 4), 16, stft_sizes=(1024, 256, 64)), 2.5, True, 3e-4),
    "l1w": (_config(16, (1, 2, 4), (4, 4, 4), 32, l1=30.0), 2.5, True, 1e-3),  # the new default
}


def _run(name, segments, test_files):
  config, gain, noisy, lr = VARIANTS[name]
  ae = config.autoencoder()
  model = ae_family._Reconstruct(ae)  # pylint: disable=protected-access
  params = oobleck.init(ae, jax.random.key(0))
  steps = _STEPS.value
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(
      optax.warmup_cosine_decay_schedule(0.0, lr, min(20, steps - 1), max(steps, 21), lr / 10)))
  opt = tx.init(params)
  data = np.clip(segments * gain, -1, 1)
  moments = jax.jit(lambda p, a: model.apply({"params": p}, a,
                                             method=oobleck.AudioAutoencoder.moments))
  mean, stdev = moments(params, jnp.asarray(data[:8]))
  print(f"{name} at init: encoder mean's std over time {float(jnp.std(mean, -1).mean()):.3f}, "
        f"VAE stdev {float(stdev.mean()):.3f}", flush=True)

  @jax.jit
  def step(params, opt, audio, key):
    hop = ae.downsampling_ratio
    noise = jax.random.normal(key, (audio.shape[0], config.latent_dim, audio.shape[-1] // hop))

    def loss(p):
      out = model.apply({"params": p}, audio, noise, deterministic=not noisy)
      return ae_family.loss_fn(out, {"audio": audio}, config)
    (value, aux), grads = jax.value_and_grad(loss, has_aux=True)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, value, aux

  rng = np.random.default_rng(0)
  started = time.time()
  for i in range(steps):
    params, opt, value, aux = step(params, opt, jnp.asarray(data[rng.integers(0, len(data), 8)]),
                                   jax.random.key(i))
    if i % 50 == 0 or i == steps - 1:
      print(f"{name} step {i} loss {float(value):.3f} stft {float(aux['stft']):.3f} "
            f"kl {float(aux['kl']):.1f}", flush=True)
  decode = jax.jit(lambda p, z: model.apply({"params": p}, z,
                                            method=oobleck.AudioAutoencoder.decode))
  rows = {}
  for path in test_files:
    audio = wav.load(path, RATE, 1)[:, :4 * 8192] * gain
    audio = np.clip(audio[:, :audio.shape[-1] // ae.downsampling_ratio * ae.downsampling_ratio],
                    -1, 1)
    mean, _ = moments(params, jnp.asarray(audio[None]))
    recon = np.asarray(decode(params, mean))[0, 0]
    rows.setdefault(path.split("/")[-2], []).append((
        spectral.mel_snr_db(audio[0], recon, RATE), spectral.centroid_hz(audio[0], RATE),
        spectral.centroid_hz(recon, RATE)))
  table = {k: dict(zip(("mel_snr_db", "centroid_in_hz", "centroid_out_hz"),
                       np.mean(v, axis=0).round(1).tolist())) for k, v in sorted(rows.items())}
  print("RESULT", name, json.dumps({"steps": steps, "seconds": round(time.time() - started),
                                    "per_instrument": table}), flush=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  unknown = [v for v in _VARIANTS.value if v not in VARIANTS]
  if unknown:
    raise app.UsageError(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
  segments = np.load(_SEGMENTS.value)["audio"]
  test_files = sorted(wav.find(_TEST.value))
  for name in _VARIANTS.value:
    _run(name, segments, test_files)


if __name__ == "__main__":
  flags.mark_flags_as_required(["segments", "test_dir"])
  app.run(main)
