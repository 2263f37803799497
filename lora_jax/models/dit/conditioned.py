"""The DiT with its conditioners, as stable-audio-tools' `ConditionedDiffusionModelWrapper`.

Parameter paths are the original's: `conditioner.conditioners.<id>` for each conditioner and
`model.model.<DiffusionTransformer>` for the DiT (the wrapper's `model` is a `DiTWrapper` whose
`model` is the transformer), so LoRAW's component whitelist and the LoRAW file's module names
(`model/model/transformer/layers/0/...`) are the paths of this tree.

Conditioners: `seconds_start` and `seconds_total` are the original's number conditioners. The
text (`prompt`) goes through a `TextEncoder`: this project ships one, `TextEmbedding`, a small
trainable embedding over the project's offline byte tokenizer (`lora_jax.data.song.text`), used
when no T5 encoder is given. It is not T5: a base trained with it understands only the prompts it
was trained on. A T5 encoder plugs in at `text_encoder`: a module with the same call, token ids
[B, L] to (embeddings [B, L, cond_dim], mask [B, L]).

Classifier-free-guidance dropout (training only): rows whose `cond_drop` is set see zeros in place
of the cross-attention tokens, as the original's forward does; the global embedding is kept.
"""

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from lora_jax.data.song import text as text_tokens
from lora_jax.models.dit import conditioning
from lora_jax.models.dit import model as dit

NUMBER_IDS = ("seconds_start", "seconds_total")
PROMPT_ID = "prompt"


@dataclasses.dataclass(frozen=True)
class ConditionedConfig:
  """The DiT and its conditioners."""

  dit: dit.DiTConfig
  cond_dim: int  # every conditioner's output width (the original's `cond_dim`)
  text_len: int  # prompt tokens (the T5 conditioner's max_length)
  number_ranges: tuple[tuple[float, float], ...]  # (min_val, max_val) of NUMBER_IDS, in order
  cross_attention_cond_ids: tuple[str, ...]
  global_cond_ids: tuple[str, ...]

  def __post_init__(self):
    known = {PROMPT_ID, *NUMBER_IDS}
    for where, ids in (("cross_attention_cond_ids", self.cross_attention_cond_ids),
                       ("global_cond_ids", self.global_cond_ids)):
      unknown = sorted(set(ids) - known)
      if unknown:
        raise ValueError(f"{where} {unknown} name no conditioner; there are {sorted(known)}")
    if PROMPT_ID in self.global_cond_ids:
      raise ValueError("global_cond_ids holds 'prompt': a token sequence cannot be a global "
                       "embedding (the original pools nothing)")
    width = self.cond_dim * len(self.global_cond_ids)
    if width != self.dit.global_cond_dim:
      raise ValueError(f"global_cond_ids {list(self.global_cond_ids)} give {width} channels "
                       f"({len(self.global_cond_ids)} x cond_dim {self.cond_dim}), the DiT's "
                       f"global_cond_dim is {self.dit.global_cond_dim}")
    if self.cross_attention_cond_ids and self.cond_dim != self.dit.cond_token_dim:
      raise ValueError(f"cond_dim {self.cond_dim} differs from the DiT's cond_token_dim "
                       f"{self.dit.cond_token_dim}")
    for lo, hi in self.number_ranges:
      if not lo < hi:
        raise ValueError(f"a number conditioner's min_val {lo} is not below its max_val {hi}")


class TextEmbedding(nn.Module):
  """Token ids [B, L] -> (embeddings [B, L, D] zeroed at padding, mask [B, L]): a token and a
  position embedding, trained with the DiT (see the module docstring)."""

  features: int
  max_len: int

  @nn.compact
  def __call__(self, tokens_BxL):
    tok = nn.Embed(text_tokens.VOCAB_SIZE, self.features, name="embedding")(tokens_BxL)
    pos = self.param("positions", nn.initializers.normal(0.02), (self.max_len, self.features))
    mask_BxL = (tokens_BxL != text_tokens.PAD).astype(jnp.float32)
    # As the original's T5 conditioner: padded positions are zeros, not attended-away.
    return (tok + pos[None, :tokens_BxL.shape[1]]) * mask_BxL[..., None], mask_BxL


class Conditioners(nn.Module):
  """`conditioners.<id>` for the prompt and the numbers."""

  config: ConditionedConfig

  @nn.compact
  def __call__(self, prompt_BxL, numbers: dict):
    cfg = self.config
    out = {}
    embeds, _ = TextEmbedding(cfg.cond_dim, cfg.text_len, name=PROMPT_ID)(prompt_BxL)
    out[PROMPT_ID] = embeds
    for name, (lo, hi) in zip(NUMBER_IDS, cfg.number_ranges):
      out[name], _ = conditioning.NumberConditioner(cfg.cond_dim, lo, hi, name=name)(
          numbers[name])
    return out


class Conditioner(nn.Module):
  """The original's `conditioner` (a MultiConditioner) holding `conditioners`."""

  config: ConditionedConfig

  @nn.compact
  def __call__(self, prompt_BxL, numbers: dict):
    return Conditioners(self.config, name="conditioners")(prompt_BxL, numbers)


class DiTWrapper(nn.Module):
  """The original's `DiTWrapper`: the transformer under `model`."""

  config: dit.DiTConfig

  @nn.compact
  def __call__(self, x, t, **cond):
    return dit.DiffusionTransformer(self.config, name="model")(x, t, **cond)


class ConditionedDiT(nn.Module):
  """(x_t [B, C, T], t [B], prompt [B, L], seconds_start [B], seconds_total [B]) -> v [B, C, T]."""

  config: ConditionedConfig

  def conditioning(self, prompt_BxL, seconds_start_B, seconds_total_B):
    """(cross_attn_cond, global_embed) as the original's `get_conditioning_inputs`."""
    cfg = self.config
    tensors = self.conditioner(prompt_BxL, {"seconds_start": seconds_start_B,
                                            "seconds_total": seconds_total_B})
    return conditioning.assemble(tensors, cfg.cross_attention_cond_ids, cfg.global_cond_ids)

  def setup(self):
    self.conditioner = Conditioner(self.config)
    self.model = DiTWrapper(self.config.dit)

  def __call__(self, x_t_BxCxT, t_B, prompt_BxL, seconds_start_B, seconds_total_B,
               cond_drop_B=None, deterministic: bool = True):
    cross, global_embed = self.conditioning(prompt_BxL, seconds_start_B, seconds_total_B)
    if cross is not None and cond_drop_B is not None and not deterministic:
      cross = jnp.where(cond_drop_B[:, None, None], jnp.zeros_like(cross), cross)
    return self.model(x_t_BxCxT, t_B, cross_attn_cond=cross, global_embed=global_embed)

  def denoise(self, x_t_BxCxT, t_B, cross_attn_cond, global_embed):
    """The DiT alone on precomputed conditioning (what sampling and guidance call)."""
    return self.model(x_t_BxCxT, t_B, cross_attn_cond=cross_attn_cond, global_embed=global_embed)
