"""PyTorch twin of `lora_jax.models.phrase_transformer.PhraseTransformer`, for parity and export.

Same modules under the same names, so its state dict is what `lora_jax.interop.torch_convert`
reads and writes with no renames: `in_proj.weight`, `pos_emb.weight`,
`blocks.0.attn.q_proj.weight`, `blocks.0.ff.in.weight`, `vel_head.weight`, ... The feed-forward
layers sit in an `nn.ModuleDict` because `in` is a Python keyword. Padded keys are masked the way
`jax.nn.dot_product_attention` masks them (a large negative logit, not -inf), so a phrase with no
real note gives finite outputs in both. It computes in the dtype of its parameters. Durations are
a residual over the written ones (`written_dur * exp(dur_head)`), the head zero at init as in Flax.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from lora_jax.models.phrase_transformer import VELOCITY_MAX, PhraseTransformerConfig


class Attention(nn.Module):
  """Bidirectional multi-head self-attention with padded keys masked."""

  def __init__(self, config: PhraseTransformerConfig):
    super().__init__()
    d = config.d_model
    self.n_heads = config.n_heads
    self.q_proj = nn.Linear(d, d)
    self.k_proj = nn.Linear(d, d)
    self.v_proj = nn.Linear(d, d)
    self.out_proj = nn.Linear(d, d)
    self.dropout = nn.Dropout(config.dropout)

  def forward(self, x_BxLxD: torch.Tensor, keymask_Bx1x1xL: torch.Tensor) -> torch.Tensor:
    b, l, d = x_BxLxD.shape
    h, dh = self.n_heads, d // self.n_heads
    heads = lambda proj: proj(x_BxLxD).view(b, l, h, dh).transpose(1, 2)
    q, k, v = heads(self.q_proj), heads(self.k_proj), heads(self.v_proj)
    logits_BxHxLxL = (q @ k.transpose(-1, -2)).float() * (1.0 / math.sqrt(dh))
    large_negative = -0.7 * torch.finfo(torch.float32).max
    logits_BxHxLxL = logits_BxHxLxL.masked_fill(~keymask_Bx1x1xL, large_negative)
    probs = torch.softmax(logits_BxHxLxL, dim=-1).to(v.dtype)
    out_BxLxD = (probs @ v).transpose(1, 2).reshape(b, l, d)
    return self.out_proj(self.dropout(out_BxLxD))


class EncoderBlock(nn.Module):
  """Pre-LN block: x + attn(ln1(x)), then x + ff(ln2(x)), exact GELU."""

  def __init__(self, config: PhraseTransformerConfig):
    super().__init__()
    d = config.d_model
    self.ln1 = nn.LayerNorm(d, eps=1e-5)
    self.attn = Attention(config)
    self.ln2 = nn.LayerNorm(d, eps=1e-5)
    self.ff = nn.ModuleDict({"in": nn.Linear(d, config.d_ff), "out": nn.Linear(config.d_ff, d)})
    self.ff_dropout = nn.Dropout(config.dropout)
    self.dropout = nn.Dropout(config.dropout)

  def forward(self, x_BxLxD: torch.Tensor, keymask_Bx1x1xL: torch.Tensor) -> torch.Tensor:
    x_BxLxD = x_BxLxD + self.dropout(self.attn(self.ln1(x_BxLxD), keymask_Bx1x1xL))
    h_BxLxF = self.ff_dropout(F.gelu(self.ff["in"](self.ln2(x_BxLxD)), approximate="none"))
    return x_BxLxD + self.dropout(self.ff["out"](h_BxLxF))


class PhraseTransformer(nn.Module):
  """Features [B, L, C], pad mask [B, L], written durations [B, L] to {'velocity', 'dur_beats'}."""

  def __init__(self, config: PhraseTransformerConfig):
    super().__init__()
    self.config = config
    self.in_proj = nn.Linear(config.n_features, config.d_model)
    self.pos_emb = nn.Embedding(config.max_len, config.d_model)
    self.dropout = nn.Dropout(config.dropout)
    self.blocks = nn.ModuleList(EncoderBlock(config) for _ in range(config.n_layers))
    self.ln_f = nn.LayerNorm(config.d_model, eps=1e-5)
    self.vel_head = nn.Linear(config.d_model, 1)
    self.dur_head = nn.Linear(config.d_model, 1)
    nn.init.zeros_(self.dur_head.weight)  # as the Flax model: untrained, durations stay written
    nn.init.zeros_(self.dur_head.bias)

  def forward(self, inputs_BxLxC: torch.Tensor, mask_BxL: torch.Tensor,
              written_dur_BxL: torch.Tensor) -> dict[str, torch.Tensor]:
    l = inputs_BxLxC.shape[1]
    if l > self.config.max_len:
      raise ValueError(f"phrase of {l} notes exceeds max_len {self.config.max_len}")
    positions_L = torch.arange(l, device=inputs_BxLxC.device)
    x_BxLxD = self.dropout(self.in_proj(inputs_BxLxC) + self.pos_emb(positions_L)[None])
    keymask_Bx1x1xL = (mask_BxL > 0)[:, None, None, :]
    for block in self.blocks:
      x_BxLxD = block(x_BxLxD, keymask_Bx1x1xL)
    x_BxLxD = self.ln_f(x_BxLxD)
    vel_BxL = self.vel_head(x_BxLxD)[..., 0].float()
    log_ratio_BxL = self.dur_head(x_BxLxD)[..., 0].float()
    return {"velocity": VELOCITY_MAX * torch.sigmoid(vel_BxL),
            "dur_beats": written_dur_BxL.float() * torch.exp(log_ratio_BxL)}
