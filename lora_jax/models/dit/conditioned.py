"""The DiT with its conditioners, as stable-audio-tools' `ConditionedDiffusionModelWrapper`.

Parameter paths are the original's: `conditioner.conditioners.<id>` for each conditioner and
`model.model.<DiffusionTransformer>` for the DiT (the wrapper's `model` is a `DiTWrapper` whose
`model` is the transformer), so LoRAW's component whitelist and the LoRAW file's module names
(`model/model/transformer/layers/0/...`) are the paths of this tree.

Conditioners: `seconds_start` and `seconds_total` are the original's number conditioners. The
text (`prompt`) comes in one of two ways (`text_encoder`):
  - 't5': the prompt arrives as the frozen T5 encoder's output [B, L, t5_width] with its mask
    [B, L] (computed once per prompt outside this model: `lora_jax.data.t5.prompts`), and the
    conditioner applies what the original's `T5Conditioner` applies after its T5: `proj_out` when
    widths differ or `project_out` is set, then zeros at padding. T5 itself is not in this tree,
    as it is not in the original's state dict (the original hides it from `named_modules`, so
    LoRAW's whitelist never reaches it either); `proj_out` is, under the original's key.
  - 'embedding': `TextEmbedding`, a small trainable embedding over the project's offline byte
    tokenizer (`lora_jax.data.song.text`), when no T5 files are given. It is not T5: a base
    trained with it understands only the prompts it was trained on.

Classifier-free-guidance dropout (training only): rows whose `cond_drop` is set see zeros in place
of the cross-attention tokens, as the original's forward does; the global embedding is kept.
"""

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from lora_jax.data.song import text as text_tokens
from lora_jax.models.dit import conditioning
from lora_jax.models.dit import model as dit
from lora_jax.models.t5 import conditioner as t5_conditioner

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
  text_encoder: str = "embedding"  # 'embedding' or 't5' (module docstring)
  t5_width: int = 0  # the T5 encoder's d_model (t5-base: 768); 't5' only
  t5_project_out: bool = False  # the T5 conditioner's `project_out` option

  def __post_init__(self):
    if self.text_encoder not in ("embedding", "t5"):
      raise ValueError(f"text_encoder {self.text_encoder!r}: 'embedding' or 't5'")
    if (self.text_encoder == "t5") != (self.t5_width > 0):
      raise ValueError(f"t5_width {self.t5_width} must be > 0 exactly when text_encoder is 't5' "
                       f"(it is {self.text_encoder!r})")
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
    # Summed in float32 whatever the weights are stored in (bfloat16 + bfloat16 rounds the sum).
    tok = nn.Embed(text_tokens.VOCAB_SIZE, self.features, dtype=jnp.float32,
                   name="embedding")(tokens_BxL)
    pos = self.param("positions", nn.initializers.normal(0.02),
                     (self.max_len, self.features)).astype(jnp.float32)
    mask_BxL = (tokens_BxL != text_tokens.PAD).astype(jnp.float32)
    # As the original's T5 conditioner: padded positions are zeros, not attended-away.
    return (tok + pos[None, :tokens_BxL.shape[1]]) * mask_BxL[..., None], mask_BxL


class T5Tokens(nn.Module):
  """The frozen T5's output [B, L, W] and mask [B, L] -> the conditioner's tokens
  [B, L, output_dim], as the original's `T5Conditioner` after its encoder."""

  output_dim: int
  project_out: bool

  @nn.compact
  def __call__(self, hidden_BxLxW, mask_BxL):
    return t5_conditioner.project_and_mask(hidden_BxLxW, mask_BxL, self.output_dim,
                                           self.project_out)


class Conditioners(nn.Module):
  """`conditioners.<id>` for the prompt and the numbers."""

  config: ConditionedConfig

  @nn.compact
  def __call__(self, prompt, numbers: dict, prompt_mask_BxL=None):
    cfg = self.config
    out = {}
    if cfg.text_encoder == "t5":
      if prompt_mask_BxL is None or prompt.ndim != 3 or prompt.shape[-1] != cfg.t5_width:
        raise ValueError(f"a T5-conditioned model takes the T5 output [B, L, {cfg.t5_width}] "
                         f"and its mask; got prompt {prompt.shape}, mask "
                         f"{None if prompt_mask_BxL is None else prompt_mask_BxL.shape}")
      out[PROMPT_ID] = T5Tokens(cfg.cond_dim, cfg.t5_project_out, name=PROMPT_ID)(
          prompt, prompt_mask_BxL)
    else:
      if prompt_mask_BxL is not None:
        raise ValueError("prompt_mask is the T5 output's; the byte-token embedding derives its "
                         "own from the padding")
      out[PROMPT_ID], _ = TextEmbedding(cfg.cond_dim, cfg.text_len, name=PROMPT_ID)(prompt)
    for name, (lo, hi) in zip(NUMBER_IDS, cfg.number_ranges):
      out[name], _ = conditioning.NumberConditioner(cfg.cond_dim, lo, hi, name=name)(
          numbers[name])
    return out


class Conditioner(nn.Module):
  """The original's `conditioner` (a MultiConditioner) holding `conditioners`."""

  config: ConditionedConfig

  @nn.compact
  def __call__(self, prompt, numbers: dict, prompt_mask_BxL=None):
    return Conditioners(self.config, name="conditioners")(prompt, numbers, prompt_mask_BxL)


class DiTWrapper(nn.Module):
  """The original's `DiTWrapper`: the transformer under `model`."""

  config: dit.DiTConfig

  @nn.compact
  def __call__(self, x, t, **cond):
    return dit.DiffusionTransformer(self.config, name="model")(x, t, **cond)


class ConditionedDiT(nn.Module):
  """(x_t [B, C, T], t [B], prompt, seconds_start [B], seconds_total [B]) -> v [B, C, T]; prompt
  is token ids [B, L] ('embedding') or the T5 output [B, L, W] with `prompt_mask` [B, L] ('t5')."""

  config: ConditionedConfig

  def conditioning(self, prompt, seconds_start_B, seconds_total_B, prompt_mask_BxL=None):
    """(cross_attn_cond, global_embed) as the original's `get_conditioning_inputs`."""
    cfg = self.config
    tensors = self.conditioner(prompt, {"seconds_start": seconds_start_B,
                                        "seconds_total": seconds_total_B}, prompt_mask_BxL)
    return conditioning.assemble(tensors, cfg.cross_attention_cond_ids, cfg.global_cond_ids)

  def setup(self):
    self.conditioner = Conditioner(self.config)
    self.model = DiTWrapper(self.config.dit)

  def __call__(self, x_t_BxCxT, t_B, prompt, seconds_start_B, seconds_total_B,
               cond_drop_B=None, prompt_mask_BxL=None, deterministic: bool = True):
    cross, global_embed = self.conditioning(prompt, seconds_start_B, seconds_total_B,
                                            prompt_mask_BxL)
    if cross is not None and cond_drop_B is not None and not deterministic:
      cross = jnp.where(cond_drop_B[:, None, None], jnp.zeros_like(cross), cross)
    return self.model(x_t_BxCxT, t_B, cross_attn_cond=cross, global_embed=global_embed)

  def denoise(self, x_t_BxCxT, t_B, cross_attn_cond, global_embed):
    """The DiT alone on precomputed conditioning (what sampling and guidance call)."""
    return self.model(x_t_BxCxT, t_B, cross_attn_cond=cross_attn_cond, global_embed=global_embed)
