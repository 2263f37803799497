"""PyTorch twin of SongGeneration's (LeVo's) language model, written to the original's module names.

Written from a reading of tencent-ailab/SongGeneration (`codeclm/models/lm_levo.py`, `levo.py`,
the vendored Hugging Face Llama in `codeclm/models/llama/modeling_llama.py` and
`codeclm/modules/conditioners.py`), so that its `state_dict()` has the keys and shapes of the
original's `model.pt` without the `audiolm.` prefix. It is the reference the Flax model
(`lora_jax/models/song/lm.py`) is tested against, and the model PEFT adapters are loaded on.

What it keeps of the original:
- `transformer` and `transformer2`: Llama causal LMs (`model.embed_tokens`, `model.layers.N`
  with `self_attn.{q,k,v,o}_proj` (no bias), `mlp.{gate,up,down}_proj` (SwiGLU with SiLU),
  `input_layernorm`, `post_attention_layernorm` (RMSNorm, eps 1e-5), `model.norm`, `lm_head`).
  Rotary embeddings on the whole head (rotate-half layout), base `rope_theta` (100000) for
  `transformer` and `rope_theta_sub` (500000) for `transformer2`; no rope scaling; positions count
  from the first prepended condition token. `model.embed_tokens` of both stacks and
  `transformer2.lm_head` exist in the checkpoint but are never used (the LM feeds embeddings).
- `emb.0` (stream 0 input), `layer2_emb.K` for K < code_depth (only K >= 1 are used),
  `mlp` = Linear(2 dim, dim), GELU (exact), Linear(dim, dim) as `mlp.0` / `mlp.2`, which fuses
  [sum of layer2_emb over streams 1.., transformer's final-norm hidden] into transformer2's input;
  `linears.K` (no bias) give the logits of streams 1..; stream 0's logits are `transformer.lm_head`.
  Input vocabulary code_size + 2 (code_size = end of sequence, code_size + 1 = the special/empty
  token of the delay pattern), output vocabulary code_size + 1.
- Conditions are prepended (the fuser's `prepend` list, first name outermost), each a pair of
  embeddings: one for `transformer`'s input, one for `transformer2`'s. No attention mask: the
  original attends to condition padding too.

A documented subset of the conditioners: they take token ids, not text (tokenising with Qwen2 and
the section-tag ranges happen outside the model):
- `description` (QwTokenizerConditioner, the lyrics): `output_proj` Embedding[text_vocab, dim] +
  `structure_emb` Embedding[200, dim] of the per-token section id; same embedding on both paths.
- `type_info` (QwTextConditioner, the style text): `output_proj` Embedding[text_vocab, dim].
- `prompt_audio` (QuantizedEmbeddingConditioner): `emb.K` Embedding[code_size + 2, dim],
  `EOT_emb` and `layer2_EOT_emb` [1, dim] parameters; path 1 = [EOT, emb.0(codes 0)], path 2 =
  [layer2_EOT, sum_k>=1 emb.k(codes k)]; the codes come padded/cut to max_len - 1 by the caller.
Not kept: classifier-free-guidance dropout, streaming caches, sampling (the Flax side owns those).
"""

import dataclasses
import math
from typing import Mapping, Sequence

import torch
from torch import nn
import torch.nn.functional as F

CONDITIONERS = ("description", "type_info", "prompt_audio")


@dataclasses.dataclass(frozen=True)
class SongLMConfig:
  code_depth: int = 3
  code_size: int = 16384
  dim: int = 64
  intermediate_size: int = 128
  num_heads: int = 4
  num_layers: int = 2
  num_layers_sub: int = 1
  rope_theta: float = 100000.0
  rope_theta_sub: float = 500000.0
  rms_norm_eps: float = 1e-5
  text_vocab_size: int = 64  # the Qwen2 tokenizer's vocabulary plus added tokens in the original
  structure_vocab_size: int = 200
  prepend: Sequence[str] = ("description", "prompt_audio", "type_info")


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
  # The original computes norms, softmax and rotary tables in float32; a float64 run stays float64.
  return torch.float64 if x.dtype == torch.float64 else torch.float32


class LlamaRMSNorm(nn.Module):

  def __init__(self, dim: int, eps: float):
    super().__init__()
    self.weight = nn.Parameter(torch.ones(dim))
    self.eps = eps

  def forward(self, x):
    h = x.to(_compute_dtype(x))
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
    return self.weight * h.to(x.dtype)


def _rotate_half(x):
  half = x.shape[-1] // 2
  return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotary(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
  """cos, sin [S, head_dim] of the Llama rotary embedding at integer positions."""
  work = torch.float64 if dtype == torch.float64 else torch.float32
  inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=work) / head_dim))
  freqs = positions.to(work)[:, None] * inv_freq[None, :]
  emb = torch.cat((freqs, freqs), dim=-1)
  return emb.cos().to(dtype), emb.sin().to(dtype)


class LlamaAttention(nn.Module):

  def __init__(self, cfg: SongLMConfig, theta: float):
    super().__init__()
    d = cfg.dim
    self.num_heads, self.head_dim, self.theta = cfg.num_heads, d // cfg.num_heads, theta
    self.q_proj = nn.Linear(d, d, bias=False)
    self.k_proj = nn.Linear(d, d, bias=False)
    self.v_proj = nn.Linear(d, d, bias=False)
    self.o_proj = nn.Linear(d, d, bias=False)

  def forward(self, x):
    b, s, d = x.shape
    split = lambda t: t.view(b, s, self.num_heads, self.head_dim).transpose(1, 2)
    q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
    cos, sin = rotary(torch.arange(s), self.head_dim, self.theta, x.dtype)
    q = q * cos + _rotate_half(q) * sin
    k = k * cos + _rotate_half(k) * sin
    scores = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(self.head_dim)
    causal = torch.ones(s, s, dtype=torch.bool).tril()
    scores = scores.masked_fill(~causal, torch.finfo(scores.dtype).min)
    probs = F.softmax(scores, dim=-1, dtype=_compute_dtype(x)).to(q.dtype)
    out = torch.matmul(probs, v).transpose(1, 2).reshape(b, s, d)
    return self.o_proj(out)


class LlamaMLP(nn.Module):

  def __init__(self, cfg: SongLMConfig):
    super().__init__()
    self.gate_proj = nn.Linear(cfg.dim, cfg.intermediate_size, bias=False)
    self.up_proj = nn.Linear(cfg.dim, cfg.intermediate_size, bias=False)
    self.down_proj = nn.Linear(cfg.intermediate_size, cfg.dim, bias=False)

  def forward(self, x):
    return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):

  def __init__(self, cfg: SongLMConfig, theta: float):
    super().__init__()
    self.self_attn = LlamaAttention(cfg, theta)
    self.mlp = LlamaMLP(cfg)
    self.input_layernorm = LlamaRMSNorm(cfg.dim, cfg.rms_norm_eps)
    self.post_attention_layernorm = LlamaRMSNorm(cfg.dim, cfg.rms_norm_eps)

  def forward(self, x):
    x = x + self.self_attn(self.input_layernorm(x))
    return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):

  def __init__(self, cfg: SongLMConfig, num_layers: int, theta: float):
    super().__init__()
    self.embed_tokens = nn.Embedding(cfg.code_size + 1, cfg.dim)  # in the checkpoint, unused
    self.layers = nn.ModuleList([LlamaDecoderLayer(cfg, theta) for _ in range(num_layers)])
    self.norm = LlamaRMSNorm(cfg.dim, cfg.rms_norm_eps)

  def forward(self, x):
    for layer in self.layers:
      x = layer(x)
    return self.norm(x)


class CausalLM(nn.Module):
  """`levo.CausalLM`: returns (logits of lm_head, final-norm hidden states)."""

  def __init__(self, cfg: SongLMConfig, num_layers: int, theta: float):
    super().__init__()
    self.model = LlamaModel(cfg, num_layers, theta)
    self.lm_head = nn.Linear(cfg.dim, cfg.code_size + 1, bias=False)

  def forward(self, inputs_embeds):
    hidden = self.model(inputs_embeds)
    return self.lm_head(hidden), hidden


class QwTokenizerConditioner(nn.Module):

  def __init__(self, cfg: SongLMConfig):
    super().__init__()
    self.output_proj = nn.Embedding(cfg.text_vocab_size, cfg.dim)
    self.structure_emb = nn.Embedding(cfg.structure_vocab_size, cfg.dim)

  def forward(self, tokens_and_sections):
    tokens, sections = tokens_and_sections
    e = self.output_proj(tokens) + self.structure_emb(sections)
    return e, e


class QwTextConditioner(nn.Module):

  def __init__(self, cfg: SongLMConfig):
    super().__init__()
    self.output_proj = nn.Embedding(cfg.text_vocab_size, cfg.dim)

  def forward(self, tokens):
    e = self.output_proj(tokens)
    return e, e


class QuantizedEmbeddingConditioner(nn.Module):

  def __init__(self, cfg: SongLMConfig):
    super().__init__()
    self.emb = nn.ModuleList([nn.Embedding(cfg.code_size + 2, cfg.dim)
                              for _ in range(cfg.code_depth)])
    self.EOT_emb = nn.Parameter(torch.randn(1, cfg.dim))
    self.layer2_EOT_emb = nn.Parameter(torch.randn(1, cfg.dim))

  def forward(self, codes_BxKxL):
    b = codes_BxKxL.shape[0]
    e1 = torch.cat([self.EOT_emb.expand(b, 1, -1), self.emb[0](codes_BxKxL[:, 0])], dim=1)
    e2 = sum(self.emb[k](codes_BxKxL[:, k]) for k in range(1, codes_BxKxL.shape[1]))
    return e1, torch.cat([self.layer2_EOT_emb.expand(b, 1, -1), e2], dim=1)


_CONDITIONER_CLASSES = {"description": QwTokenizerConditioner, "type_info": QwTextConditioner,
                        "prompt_audio": QuantizedEmbeddingConditioner}


class ConditionerProvider(nn.Module):

  def __init__(self, cfg: SongLMConfig):
    super().__init__()
    unknown = [n for n in cfg.prepend if n not in _CONDITIONER_CLASSES]
    if unknown:
      raise ValueError(f"unknown conditioner {unknown[0]!r}; known: {', '.join(CONDITIONERS)}")
    self.conditioners = nn.ModuleDict({n: _CONDITIONER_CLASSES[n](cfg) for n in cfg.prepend})


class LmModel(nn.Module):
  """`lm_levo.LmModel`: patterned codes [B, K, S] + conditions -> logits [B, K, S, code_size+1]."""

  def __init__(self, cfg: SongLMConfig):
    super().__init__()
    self.cfg = cfg
    d, vocab_in = cfg.dim, cfg.code_size + 2
    self.condition_provider = ConditionerProvider(cfg)
    self.emb = nn.ModuleList([nn.Embedding(vocab_in, d)])
    self.transformer = CausalLM(cfg, cfg.num_layers, cfg.rope_theta)
    self.mlp = nn.Sequential(nn.Linear(2 * d, d), nn.GELU(), nn.Linear(d, d))
    self.layer2_emb = nn.ModuleList([nn.Embedding(vocab_in, d) for _ in range(cfg.code_depth)])
    self.transformer2 = CausalLM(cfg, cfg.num_layers_sub, cfg.rope_theta_sub)
    self.linears = nn.ModuleList([nn.Linear(d, cfg.code_size + 1, bias=False)
                                  for _ in range(cfg.code_depth - 1)])

  def forward(self, sequence_BxKxS, conditions: Mapping[str, object]):
    b, k, s = sequence_BxKxS.shape
    if k != self.cfg.code_depth:
      raise ValueError(f"sequence has {k} streams, the model {self.cfg.code_depth}")
    x1 = self.emb[0](sequence_BxKxS[:, 0])
    x2 = sum(self.layer2_emb[q](sequence_BxKxS[:, q]) for q in range(1, k))
    for name in reversed(self.cfg.prepend):
      c1, c2 = self.condition_provider.conditioners[name](conditions[name])
      x1, x2 = torch.cat([c1.to(x1.dtype), x1], 1), torch.cat([c2.to(x2.dtype), x2], 1)
    logits0, hidden = self.transformer(x1)
    _, hidden2 = self.transformer2(self.mlp(torch.cat([x2, hidden], dim=-1)))
    logits = torch.stack([logits0] + [lin(hidden2) for lin in self.linears], dim=1)
    return logits[:, :, -s:]
