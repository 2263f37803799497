"""PyTorch twin of `lora_jax.models.transformer.MusicTransformer`, for parity tests and export.

Same modules under the same names, so its state dict is what `lora_jax.interop.torch_convert`
reads and writes: `tok_emb.weight`, `blocks.0.attn.q_proj.weight`, `blocks.0.ff.in.weight`, ...
The feed-forward layers sit in an `nn.ModuleDict` because `in` is a Python keyword. Dropout sits
where the Flax model has it (after attention, not on the attention weights). It computes in the
dtype of its parameters; `config.dtype` is the Flax compute dtype and is not read here. With
`config.positions == "rotary"` there is no `pos_emb` and queries and keys are rotated as the Flax
model rotates them (rotate-half layout, theta `ROTARY_THETA`, tables in float32).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from lora_jax.models.transformer import ROTARY_THETA, TransformerConfig


def _rotary(x_BxHxTxK: torch.Tensor) -> torch.Tensor:
  t, dh = x_BxHxTxK.shape[-2:]
  inv_freq = 1.0 / (ROTARY_THETA ** (torch.arange(0, dh, 2, dtype=torch.float32) / dh))
  freqs = torch.arange(t, dtype=torch.float32)[:, None] * inv_freq[None, :]
  angles = torch.cat([freqs, freqs], dim=-1).to(x_BxHxTxK.device)
  cos, sin = angles.cos().to(x_BxHxTxK.dtype), angles.sin().to(x_BxHxTxK.dtype)
  half = dh // 2
  rotated = torch.cat([-x_BxHxTxK[..., half:], x_BxHxTxK[..., :half]], dim=-1)
  return x_BxHxTxK * cos + rotated * sin


class Attention(nn.Module):
  """Causal multi-head self-attention."""

  def __init__(self, config: TransformerConfig):
    super().__init__()
    d = config.d_model
    self.n_heads = config.n_heads
    self.rotary = config.positions == "rotary"
    self.q_proj = nn.Linear(d, d)
    self.k_proj = nn.Linear(d, d)
    self.v_proj = nn.Linear(d, d)
    self.out_proj = nn.Linear(d, d)
    self.dropout = nn.Dropout(config.dropout)

  def forward(self, x_BxTxD: torch.Tensor) -> torch.Tensor:
    b, t, d = x_BxTxD.shape
    h, dh = self.n_heads, d // self.n_heads
    heads = lambda proj: proj(x_BxTxD).view(b, t, h, dh).transpose(1, 2)
    q, k = heads(self.q_proj), heads(self.k_proj)
    if self.rotary:
      q, k = _rotary(q), _rotary(k)
    out_BxHxTxK = F.scaled_dot_product_attention(
        q, k, heads(self.v_proj), is_causal=True, scale=1.0 / math.sqrt(dh))
    out_BxTxD = out_BxHxTxK.transpose(1, 2).reshape(b, t, d)
    return self.out_proj(self.dropout(out_BxTxD))


class Block(nn.Module):
  """Pre-LN block: x + attn(ln1(x)), then x + ff(ln2(x)), exact GELU."""

  def __init__(self, config: TransformerConfig):
    super().__init__()
    d = config.d_model
    self.ln1 = nn.LayerNorm(d, eps=1e-5)
    self.attn = Attention(config)
    self.ln2 = nn.LayerNorm(d, eps=1e-5)
    self.ff = nn.ModuleDict({"in": nn.Linear(d, config.d_ff), "out": nn.Linear(config.d_ff, d)})
    self.ff_dropout = nn.Dropout(config.dropout)
    self.dropout = nn.Dropout(config.dropout)

  def forward(self, x_BxTxD: torch.Tensor) -> torch.Tensor:
    x_BxTxD = x_BxTxD + self.dropout(self.attn(self.ln1(x_BxTxD)))
    h_BxTxF = self.ff_dropout(F.gelu(self.ff["in"](self.ln2(x_BxTxD)), approximate="none"))
    return x_BxTxD + self.dropout(self.ff["out"](h_BxTxF))


class MusicTransformer(nn.Module):
  """Token ids [B, T] to next-token logits [B, T, vocab_size] (float32)."""

  def __init__(self, config: TransformerConfig):
    super().__init__()
    self.config = config
    self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
    if config.positions == "learned":
      self.pos_emb = nn.Embedding(config.max_len, config.d_model)
    self.dropout = nn.Dropout(config.dropout)
    self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
    self.ln_f = nn.LayerNorm(config.d_model, eps=1e-5)
    self.head = nn.Linear(config.d_model, config.vocab_size)

  def forward(self, tokens_BxT: torch.Tensor) -> torch.Tensor:
    """Logits for every position, causal over the sequence."""
    t = tokens_BxT.shape[1]
    if t > self.config.max_len:
      raise ValueError(f"sequence length {t} exceeds max_len {self.config.max_len}")
    x_BxTxD = self.tok_emb(tokens_BxT)
    if self.config.positions == "learned":
      x_BxTxD = x_BxTxD + self.pos_emb(torch.arange(t, device=tokens_BxT.device))[None]
    x_BxTxD = self.dropout(x_BxTxD)
    for block in self.blocks:
      x_BxTxD = block(x_BxTxD)
    return self.head(self.ln_f(x_BxTxD)).float()
