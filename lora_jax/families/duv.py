"""DUV humanisation as a training family: the PhraseTransformer on phrase windows of notes.

Batch (the arrays of `lora_jax.data.duv.manifest.phrase_windows`, without its `row`/`start`
bookkeeping, plus `written_dur`): `inputs` float32 [B, L, C] scaled features, `mask` bool [B, L]
true at real notes, `written_dur` float32 [B, L] the written (deadpan) duration in beats, unscaled
(the model's duration is a residual over it), `targets` float32 [B, L, 2] the human (velocity in
MIDI units, duration in beats).

Loss: `vel_weight * vel_loss + dur_weight * dur_loss`, each a mean over the real notes of the
batch only:
  vel_loss      L1 of velocity / 127, metric too.
  dur_loss      L1 of the duration in beats: the conditional median, which is what the reported
                mean absolute error rewards (a Huber loss with delta 1 beat is a squared loss for
                these sub-beat errors and was worse; so was L1 of the log duration).
  vel_mae_midi  the velocity L1 in MIDI units, the number the baselines report.
A batch without `targets`, or with targets not of width 2, is an error at trace time: the
original DUV fell back to a zero loss here and trained without learning.

Sharding as the music_lm family: widening projections (q/k/v, ff.in) split their output axis over
'model' and input axis over 'fsdp', narrowing ones (out_proj, ff.out) the other way; positions
split their width over 'fsdp'; the small input projection, heads, norms and biases replicate.
"""

import dataclasses

import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from lora_jax import errors
from lora_jax.models.phrase_transformer import VELOCITY_MAX, PhraseTransformer, \
    PhraseTransformerConfig
from lora_jax.train.family import Example, Family

NAME = "duv"
TARGET_NAMES = ("velocity", "dur_beats")  # the columns of `targets`, duv_features.TARGETS

PARTITION_RULES = (
    (r"attn\.(q_proj|k_proj|v_proj)\.kernel$", P("fsdp", "model")),
    (r"attn\.out_proj\.kernel$", P("model", "fsdp")),
    (r"ff\.in\.kernel$", P("fsdp", "model")),
    (r"ff\.out\.kernel$", P("model", "fsdp")),
    (r"pos_emb\.embedding$", P(None, "fsdp")),
    (r".*", P()),  # in_proj, heads, biases and layer norms: replicated
)


class MissingTargetError(errors.UserError):
  """A batch or model output without what the DUV loss scores."""


@dataclasses.dataclass(frozen=True)
class DuvConfig:
  """The `config.model` group of the duv family."""

  n_features: int  # input columns per note (the scaler's columns)
  d_model: int
  n_heads: int
  n_layers: int
  d_ff: int
  max_len: int  # positions the model has
  dropout: float
  seq_len: int  # notes per training window (the data build's max_len); <= max_len
  vel_weight: float  # weight of vel_loss in the loss
  dur_weight: float  # weight of dur_loss in the loss

  def model_config(self, compute_dtype: str = "float32") -> PhraseTransformerConfig:
    """The model's own config (what a DUV bundle stores) in `compute_dtype`."""
    return PhraseTransformerConfig(
        n_features=self.n_features, d_model=self.d_model, n_heads=self.n_heads,
        n_layers=self.n_layers, d_ff=self.d_ff, max_len=self.max_len, dropout=self.dropout,
        dtype=compute_dtype)


def _check(outputs, batch) -> None:
  if "targets" not in batch or "mask" not in batch:
    raise MissingTargetError(f"the duv loss needs batch arrays 'targets' [B, L, 2] "
                             f"{TARGET_NAMES} and 'mask' [B, L]; the batch holds {sorted(batch)}")
  if batch["targets"].shape[-1] != len(TARGET_NAMES):
    raise MissingTargetError(f"targets have {batch['targets'].shape[-1]} columns, the duv loss "
                             f"scores {len(TARGET_NAMES)}: {TARGET_NAMES}")
  missing = [k for k in TARGET_NAMES if k not in outputs]
  if missing:
    raise MissingTargetError(f"model outputs {sorted(outputs)} lack {missing}")


def make_loss_fn(config: DuvConfig):
  """The loss of `config`'s weights: (loss, {vel_loss, dur_loss, vel_mae_midi})."""

  def loss_fn(outputs, batch):
    _check(outputs, batch)
    targets_BxLx2 = batch["targets"].astype(jnp.float32)
    weights_BxL = (batch["mask"] > 0).astype(jnp.float32)
    # No guard against an empty mask: 0/0 is NaN, which the loop counts and skips.
    count = jnp.sum(weights_BxL)
    vel_err_BxL = jnp.abs(outputs["velocity"] - targets_BxLx2[..., 0]) / VELOCITY_MAX
    dur_err_BxL = jnp.abs(outputs["dur_beats"] - targets_BxLx2[..., 1])
    vel_loss = jnp.sum(vel_err_BxL * weights_BxL) / count
    dur_loss = jnp.sum(dur_err_BxL * weights_BxL) / count
    loss = config.vel_weight * vel_loss + config.dur_weight * dur_loss
    return loss, {"vel_loss": vel_loss, "dur_loss": dur_loss,
                  "vel_mae_midi": vel_loss * VELOCITY_MAX}

  return loss_fn


def synthetic(config: DuvConfig, n: int, seed: int) -> dict[str, np.ndarray]:
  """A learnable window set: targets depend on a note's own features and on its phrase's mean.

  velocity = 64 + 30 tanh(x0) + 20 tanh(mean over the phrase's real notes of x1), so only a model
  that attends across the phrase reaches zero error; written_dur is 0.25-2 beats and
  dur_beats = written_dur * exp(0.3 tanh(x2)).
  """
  rng = np.random.default_rng(seed)
  inputs = rng.normal(size=(n, config.seq_len, config.n_features)).astype(np.float32)
  lengths = rng.integers(config.seq_len * 3 // 4, config.seq_len + 1, n)
  mask = np.arange(config.seq_len)[None, :] < lengths[:, None]
  phrase_mean = (inputs[..., 1] * mask).sum(1) / lengths
  velocity = 64 + 30 * np.tanh(inputs[..., 0]) + 20 * np.tanh(phrase_mean)[:, None]
  written = rng.choice([0.25, 0.5, 1.0, 2.0], size=mask.shape) * mask
  dur = written * np.exp(0.3 * np.tanh(inputs[..., 2]))
  targets = np.stack([velocity, dur], axis=-1) * mask[..., None]
  inputs = inputs * mask[..., None]
  return {"inputs": inputs, "targets": targets.astype(np.float32), "mask": mask,
          "written_dur": written.astype(np.float32)}


def make(config: DuvConfig, compute_dtype: str) -> Family:
  """The duv family for a model size and a compute dtype."""
  if config.seq_len > config.max_len:
    raise ValueError(f"model.seq_len {config.seq_len} exceeds model.max_len {config.max_len}")
  return Family(
      name=NAME,
      model=PhraseTransformer(config.model_config(compute_dtype)),
      batch_spec={"inputs": Example((config.seq_len, config.n_features), "float32"),
                  "targets": Example((config.seq_len, len(TARGET_NAMES)), "float32"),
                  "mask": Example((config.seq_len,), "bool"),
                  "written_dur": Example((config.seq_len,), "float32")},
      inputs=("inputs", "mask", "written_dur"),
      loss_fn=make_loss_fn(config),
      partition_rules=PARTITION_RULES,
      synthetic=lambda n, seed: synthetic(config, n, seed),
      loss_weight=lambda batch: jnp.sum(batch["mask"] > 0))
