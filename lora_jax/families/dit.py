"""Stable Audio's diffusion transformer as a training family: the v-objective on pre-encoded
latents (`lora_jax.models.dit`).

Batch (per example): `latents` float32 [C, T], a clip's autoencoder latents; `padding_mask`
float32 [T], 1 on real latent frames; `seconds_start` and `seconds_total` float32 []; and the
prompt, by `text_encoder`: 'embedding', `prompt` int32 [L], the text's byte token ids
(`lora_jax.data.song.text.encode_text`); 't5', `prompt` float32 [L, t5_width], the frozen T5
encoder's output for the text, and `prompt_mask` float32 [L], 1 on real tokens
(`lora_jax.data.t5.prompts`: T5 runs once per distinct prompt, before training, not in the step).

`prepare` draws, from the step's key, the time t ~ U(0, 1), the noise, and which rows drop their
conditioning (classifier-free guidance, `cfg_dropout`); it returns x_t and the v target
(`lora_jax.models.dit.objective`). The loss is the masked MSE of v over real frames and all
channels. Evaluation prepares with the loop's fixed evaluation key: every validation batch sees
the same times and noise at every evaluation, so the validation loss is a held-out denoising loss
averaged over fixed draws of t, comparable between runs (base, LoRA, ReLoRA).

Sharding: the widening projections (to_qkv, to_q, to_kv, the GLU's proj) split their output axis
over 'model' and input over 'fsdp', to_out and ff.2 the other way round; everything else
(conditioners, embeddings of time, the 1x1 convolutions, norms) is replicated.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from lora_jax.data.song import text as text_tokens
from lora_jax.models.dit import conditioned
from lora_jax.models.dit import model as dit
from lora_jax.models.dit import objective
from lora_jax.train.family import Example, Family

NAME = "dit"

PARTITION_RULES = (
    (r"(to_qkv|to_q|to_kv|ff\.0\.proj)\.kernel$", P("fsdp", "model")),
    (r"(to_out|ff\.2)\.kernel$", P("model", "fsdp")),
    (r".*", P()),
)


@dataclasses.dataclass(frozen=True)
class DitConfig:
  """The `config.model` group of the dit family (field names follow the original's JSON)."""

  io_channels: int  # latent channels C
  embed_dim: int
  depth: int
  num_heads: int
  cond_token_dim: int
  global_cond_dim: int
  project_cond_tokens: bool
  project_global_cond: bool
  cond_dim: int  # the conditioners' output width
  text_len: int  # prompt tokens L
  text_encoder: str  # 'embedding' (a trainable byte-token embedding) or 't5' (frozen T5 output)
  t5_width: int  # the T5 encoder's d_model ('t5'), else 0
  t5_project_out: bool  # the T5 conditioner's project_out (proj_out even at equal widths)
  seconds_start_range: tuple[float, float]  # the number conditioner's (min_val, max_val)
  seconds_total_range: tuple[float, float]
  cross_attention_cond_ids: tuple[str, ...]
  global_cond_ids: tuple[str, ...]
  latent_length: int  # T, latent frames per training example
  cfg_dropout: float  # probability a training row sees no cross-attention conditioning

  def __post_init__(self):
    object.__setattr__(self, "cross_attention_cond_ids", tuple(self.cross_attention_cond_ids))
    object.__setattr__(self, "global_cond_ids", tuple(self.global_cond_ids))
    if self.text_encoder not in ("embedding", "t5"):
      raise ValueError(f"model.text_encoder {self.text_encoder!r}: 'embedding' (a trainable "
                       "embedding over the project's byte tokenizer) or 't5'")
    if (self.text_encoder == "t5") != (self.t5_width > 0):
      raise ValueError(f"model.t5_width {self.t5_width} must be > 0 exactly when "
                       f"model.text_encoder is 't5' (it is {self.text_encoder!r})")
    if not 0.0 <= self.cfg_dropout < 1.0:
      raise ValueError(f"model.cfg_dropout must be in [0, 1), got {self.cfg_dropout}")
    if self.latent_length < 1 or self.text_len < 1:
      raise ValueError(f"model.latent_length {self.latent_length} and model.text_len "
                       f"{self.text_len} must be >= 1")

  def conditioned(self, compute_dtype: str = "float32") -> conditioned.ConditionedConfig:
    return conditioned.ConditionedConfig(
        dit=dit.DiTConfig(io_channels=self.io_channels, embed_dim=self.embed_dim,
                          cond_token_dim=self.cond_token_dim,
                          project_cond_tokens=self.project_cond_tokens,
                          global_cond_dim=self.global_cond_dim,
                          project_global_cond=self.project_global_cond, depth=self.depth,
                          num_heads=self.num_heads, dtype=compute_dtype),
        cond_dim=self.cond_dim, text_len=self.text_len,
        number_ranges=(tuple(self.seconds_start_range), tuple(self.seconds_total_range)),
        cross_attention_cond_ids=self.cross_attention_cond_ids,
        global_cond_ids=self.global_cond_ids, text_encoder=self.text_encoder,
        t5_width=self.t5_width, t5_project_out=self.t5_project_out)


def prepare(batch, key, cfg_dropout: float):
  """t ~ U(0, 1), noise ~ N(0, 1), the rows that drop their conditioning; x_t and v."""
  x0 = batch["latents"]
  t_key, noise_key, drop_key = jax.random.split(key, 3)
  t = jax.random.uniform(t_key, x0.shape[:1])
  noise = jax.random.normal(noise_key, x0.shape, x0.dtype)
  x_t, v = objective.noised_and_target(x0, t, noise)
  drop = jax.random.bernoulli(drop_key, cfg_dropout, x0.shape[:1])
  return {**batch, "x_t": x_t, "t": t, "v": v, "cond_drop": drop}


def loss_fn(v_pred, batch):
  """Mean squared error of v over real frames, all channels (no real frame: NaN, skipped)."""
  err = jnp.square(v_pred.astype(jnp.float32) - batch["v"].astype(jnp.float32))
  mask = jnp.broadcast_to(batch["padding_mask"][:, None, :], err.shape)
  loss = jnp.sum(err * mask) / jnp.sum(mask)
  return loss, {"v_mse": loss}


def _synthetic_prompts(config: DitConfig, freq: np.ndarray) -> dict[str, np.ndarray]:
  if config.text_encoder == "embedding":
    return {"prompt": np.stack([text_tokens.encode_text(f"tone {f}", config.text_len)
                                for f in freq]).astype(np.int32)}
  # Stand-ins for T5 outputs (no T5 runs here): a fixed random sequence per frequency, the
  # first 3 tokens real.
  table = np.random.default_rng(1234).normal(size=(4, config.text_len, config.t5_width))
  mask = np.zeros((len(freq), config.text_len), np.float32)
  mask[:, :3] = 1
  return {"prompt": table[freq].astype(np.float32) * mask[..., None], "prompt_mask": mask}


def synthetic(config: DitConfig, n: int, seed: int) -> dict[str, np.ndarray]:
  """Learnable latents: per example a few sinusoids whose frequency the prompt names."""
  rng = np.random.default_rng(seed)
  c, t = config.io_channels, config.latent_length
  freq = rng.integers(1, 4, n)
  phase = rng.uniform(0, 2 * np.pi, (n, c, 1))
  frames = np.arange(t)[None, None, :]
  latents = np.sin(2 * np.pi * freq[:, None, None] * frames / t + phase).astype(np.float32)
  lo, hi = config.seconds_total_range
  total = rng.uniform(lo, hi, n).astype(np.float32)
  return {"latents": latents, "padding_mask": np.ones((n, t), np.float32),
          **_synthetic_prompts(config, freq), "seconds_start": np.zeros(n, np.float32),
          "seconds_total": total}


def prompt_spec(config: DitConfig) -> dict[str, Example]:
  """The prompt's batch arrays: byte token ids, or the frozen T5 output and its mask."""
  if config.text_encoder == "t5":
    return {"prompt": Example((config.text_len, config.t5_width), "float32"),
            "prompt_mask": Example((config.text_len,), "float32")}
  return {"prompt": Example((config.text_len,), "int32", bounds=(0, text_tokens.VOCAB_SIZE),
                            bounds_reason=f"the byte tokenizer's {text_tokens.VOCAB_SIZE} ids")}


def batch_spec(config: DitConfig) -> dict[str, Example]:
  return {"latents": Example((config.io_channels, config.latent_length), "float32"),
          "padding_mask": Example((config.latent_length,), "float32"),
          **prompt_spec(config),
          "seconds_start": Example((), "float32"),
          "seconds_total": Example((), "float32")}


def text_encoder_metadata(config: DitConfig) -> dict[str, str]:
  """What a whole-model file of this family records about its text encoder: the prompt
  conditioner's parameters differ between the two (an embedding table, or T5's proj_out), so a
  base trained with one cannot run with the other."""
  if config.text_encoder == "t5":
    return {"text_encoder": "t5", "t5_width": str(config.t5_width)}
  return {"text_encoder": config.text_encoder}


def make(config: DitConfig, compute_dtype: str) -> Family:
  """The dit family for a model size, a latent length and a compute dtype."""
  return Family(
      name=NAME,
      model=conditioned.ConditionedDiT(config.conditioned(compute_dtype)),
      batch_spec=batch_spec(config),
      inputs=("x_t", "t", "prompt", "seconds_start", "seconds_total", "cond_drop")
      + (("prompt_mask",) if config.text_encoder == "t5" else ()),
      loss_fn=loss_fn,
      partition_rules=PARTITION_RULES,
      synthetic=lambda n, seed: synthetic(config, n, seed),
      loss_weight=lambda batch: jnp.sum(batch["padding_mask"]) * config.io_channels,
      prepare=functools.partial(prepare, cfg_dropout=config.cfg_dropout),
      weights_metadata=text_encoder_metadata(config))
