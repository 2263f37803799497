"""The vocal/accompaniment separator as a training family: a mask net over STFT magnitudes.

Batch: `vocal` and `accompaniment` float16 [B, segment_samples], the exact stems of one window
(`lora_jax.audio.separator.stem_set.segments`; float16 halves the memory of the set). `prepare`
draws the vocal's level in +-gain_db around the stored 0 dB balance, mixes the two stems and takes
the three STFT magnitudes (`lora_jax.audio.separator.spectrum`) inside the jitted step, so every
epoch hears new mixes of the same stems.

Loss: L1 of the masked mix magnitude against each true stem's, vocal (mask M) plus accompaniment
(mask 1 - M), a mean over every bin of the batch; metrics `vocal_l1`, `accompaniment_l1`. An L1 on
magnitudes weights bins by energy, as the SI-SDR the model is judged by does.

Everything replicates: the model has under a million parameters.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from lora_jax.audio.separator import spectrum
from lora_jax.models.separator import MaskNet, MaskNetConfig
from lora_jax.train.family import Example, Family

NAME = "separator"
SAMPLE_RATE = 22050  # the stems' and the model's; inference resamples to it


@dataclasses.dataclass(frozen=True)
class SeparatorConfig:
  """The `config.model` group of the separator family."""

  n_fft: int  # STFT size at SAMPLE_RATE
  hop: int  # STFT hop
  segment_samples: int  # samples per training window
  hidden: int  # features per frame
  n_layers: int  # dilated residual convolutions
  kernel: int  # taps per convolution
  gain_db: float  # the vocal's level is drawn uniformly in [-gain_db, +gain_db] dB

  def model_config(self, compute_dtype: str = "float32") -> MaskNetConfig:
    return MaskNetConfig(n_bins=self.n_fft // 2 + 1, hidden=self.hidden, n_layers=self.n_layers,
                         kernel=self.kernel, dtype=compute_dtype)

  def metadata(self) -> dict[str, str]:
    """What a weights file records so that inference needs no config."""
    return {"sample_rate": str(SAMPLE_RATE), "n_fft": str(self.n_fft), "hop": str(self.hop),
            "hidden": str(self.hidden), "n_layers": str(self.n_layers),
            "kernel": str(self.kernel)}


def make_prepare(config: SeparatorConfig):
  def prepare(batch, key):
    vocal_BxN = batch["vocal"].astype(jnp.float32)
    accompaniment_BxN = batch["accompaniment"].astype(jnp.float32)
    gain_db_B = jax.random.uniform(key, (vocal_BxN.shape[0], 1), minval=-config.gain_db,
                                   maxval=config.gain_db)
    vocal_BxN = vocal_BxN * 10.0 ** (gain_db_B / 20.0)
    b = vocal_BxN.shape[0]
    mags = spectrum.magnitude(jnp.concatenate([vocal_BxN + accompaniment_BxN, vocal_BxN,
                                               accompaniment_BxN]), config.n_fft, config.hop)
    return {"mix_magnitude": mags[:b], "vocal_magnitude": mags[b:2 * b],
            "accompaniment_magnitude": mags[2 * b:]}
  return prepare


def loss_fn(outputs, batch):
  mask_BxTxF = outputs["vocal_mask"]
  mix_BxTxF = batch["mix_magnitude"]
  vocal_l1 = jnp.mean(jnp.abs(mask_BxTxF * mix_BxTxF - batch["vocal_magnitude"]))
  accompaniment_l1 = jnp.mean(jnp.abs((1.0 - mask_BxTxF) * mix_BxTxF
                                      - batch["accompaniment_magnitude"]))
  return vocal_l1 + accompaniment_l1, {"vocal_l1": vocal_l1, "accompaniment_l1": accompaniment_l1}


def synthetic(config: SeparatorConfig, n: int, seed: int) -> dict[str, np.ndarray]:
  """A learnable set: the 'vocal' a held harmonic tone (8 partials, 200-800 Hz), the
  'accompaniment' white noise bursts, so the mask to learn is the tone's partials."""
  rng = np.random.default_rng(seed)
  t = np.arange(config.segment_samples) / SAMPLE_RATE
  f0 = rng.uniform(200, 800, (n, 1, 1))
  partials = np.arange(1, 9)
  vocal = (np.sin(2 * np.pi * f0 * partials[None, :, None] * t) / partials[:, None]).sum(1)
  bursts = (np.sin(2 * np.pi * rng.uniform(2, 6, (n, 1)) * t) > 0).astype(np.float32)
  accompaniment = rng.normal(size=(n, config.segment_samples)) * bursts
  scale = 0.3 / np.abs(vocal).max(axis=1, keepdims=True)
  return {"vocal": (vocal * scale).astype(np.float16),
          "accompaniment": (accompaniment * 0.1).astype(np.float16)}


def make(config: SeparatorConfig, compute_dtype: str) -> Family:
  """The separator family for a model size and a compute dtype."""
  if config.segment_samples < config.n_fft:
    raise ValueError(f"model.segment_samples {config.segment_samples} is shorter than one STFT "
                     f"frame (model.n_fft {config.n_fft})")
  spec = Example((config.segment_samples,), "float16")
  return Family(
      name=NAME,
      model=MaskNet(config.model_config(compute_dtype)),
      batch_spec={"vocal": spec, "accompaniment": spec},
      inputs=("mix_magnitude",),
      loss_fn=loss_fn,
      partition_rules=((r".*", P()),),
      synthetic=lambda n, seed: synthetic(config, n, seed),
      prepare=make_prepare(config),
      weights_metadata=config.metadata())
