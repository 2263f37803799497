"""Cached sampling against recomputing the prefix, and against the PyTorch twin with a KV cache.

  .venv/bin/python bench/cached_sampling.py                  # the shipped base, 1,024 tokens
  .venv/bin/python bench/cached_sampling.py --length=255     # quicker

Model: the shipped base (assets/base_model: 4 blocks, d_model 128, 4 heads, d_ff 512, max_len
1,024, 561 tokens), batch 1, prompt BOS, `--length` new tokens (1,023: a full 1,024-token
sequence), temperature 1, seed 0. Measured in this one run, each arm compiled/warmed first:
  1. cached: `lora_jax.models.decode.sample` (one jitted fori_loop, keys and values cached);
  2. recomputed: each step runs the whole model on the prefix (padded up to a multiple of 64
     tokens, one compile per bucket, so at most 63 padded positions a step; causal attention makes
     the padding invisible to the logits read), samples with the same rule and key
     (`fold_in(key, position)`), and the tokens must equal the cached run's;
  3. the PyTorch twin (third_party/music_transformer_torch.py, the same weights) generating with a
     KV cache written here over its modules (torch has none of its own), checked against its own
     full forward at the end; tokens/s only (torch's random stream differs from jax's).
"""

import argparse
import math
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from lora_jax.data import midi_tokenizer  # noqa: E402
from lora_jax.hierarchy import base_file  # noqa: E402
from lora_jax.interop import torch_convert  # noqa: E402
from lora_jax.models import decode  # noqa: E402
from third_party.music_transformer_torch import MusicTransformer as TorchMusicTransformer  # noqa: E402

BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "assets", "base_model",
                    "base_model.safetensors")
BUCKET = 64


def cached(model, params, prompt, length, rng):
  return np.asarray(decode.sample(model, params, prompt, length, rng=rng, temperature=1.0))


def recomputed(model, params, prompt, length, rng):
  """Tokens sampled by running the whole prefix through the model at every step."""

  @jax.jit
  def step(tokens_1xL, i):
    logits_1xLxV = model.apply({"params": params}, tokens_1xL, deterministic=True)
    logits_1xV = jax.lax.dynamic_index_in_dim(logits_1xLxV, i, axis=1, keepdims=False)
    filtered = decode.filter_logits(logits_1xV, jnp.float32(1.0), 0, jnp.float32(1.0))
    return jax.random.categorical(jax.random.fold_in(rng, i), filtered).astype(jnp.int32)

  p = prompt.shape[1]
  total = p + length
  tokens = np.zeros((1, total), np.int32)
  tokens[:, :p] = prompt
  for i in range(p - 1, total - 1):
    width = min(total, BUCKET * math.ceil((i + 1) / BUCKET))
    tokens[0, i + 1] = int(step(jnp.asarray(tokens[:, :width]), i)[0])
  return tokens


def warm_recomputed(model, params, total):
  """Compile every bucket's forward once, outside the timing."""
  dummy = jax.random.key(0)
  for width in range(BUCKET, total + BUCKET, BUCKET):
    w = min(width, total)
    recomputed_step_warm = recomputed(model, params, np.zeros((1, w - 1), np.int32), 1, dummy)
    del recomputed_step_warm


class TorchCache:
  """Per-block key/value tensors [1, H, max_len, K] of the twin and how many positions are real."""

  def __init__(self, twin: TorchMusicTransformer):
    c = twin.config
    shape = (1, c.n_heads, c.max_len, c.d_model // c.n_heads)
    self.keys = [torch.zeros(shape) for _ in twin.blocks]
    self.values = [torch.zeros(shape) for _ in twin.blocks]
    self.length = 0


def torch_step(twin: TorchMusicTransformer, cache: TorchCache, token: int) -> torch.Tensor:
  """Logits [V] of one new token, its keys and values appended to the cache."""
  i = cache.length
  x = twin.tok_emb.weight[token] + twin.pos_emb.weight[i]
  x = x.view(1, 1, -1)
  for layer, block in enumerate(twin.blocks):
    attn = block.attn
    h, d = attn.n_heads, x.shape[-1]
    k_dim = d // h
    y = block.ln1(x)
    heads = lambda proj: proj(y).view(1, 1, h, k_dim).transpose(1, 2)
    cache.keys[layer][:, :, i:i + 1] = heads(attn.k_proj)
    cache.values[layer][:, :, i:i + 1] = heads(attn.v_proj)
    out = F.scaled_dot_product_attention(
        heads(attn.q_proj), cache.keys[layer][:, :, :i + 1], cache.values[layer][:, :, :i + 1],
        scale=1.0 / math.sqrt(k_dim))
    x = x + attn.out_proj(out.transpose(1, 2).reshape(1, 1, d))
    x = x + block.ff["out"](F.gelu(block.ff["in"](block.ln2(x)), approximate="none"))
  cache.length = i + 1
  return twin.head(twin.ln_f(x))[0, 0]


def torch_generate(twin, prompt: list[int], length: int, seed: int) -> tuple[list[int], torch.Tensor]:
  generator = torch.Generator().manual_seed(seed)
  cache = TorchCache(twin)
  tokens = list(prompt)
  with torch.inference_mode():
    for t in tokens[:-1]:
      torch_step(twin, cache, t)
    for _ in range(length):
      logits = torch_step(twin, cache, tokens[-1])
      tokens.append(int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)))
  return tokens, logits


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default=BASE)
  parser.add_argument("--length", type=int, default=1023)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--torch_threads", type=int, default=1,
                      help="torch's intra-op threads; on this shared 2-core machine two threads "
                           "spin against the other processes and ran 30x slower than one")
  args = parser.parse_args()
  base = base_file.load_model(args.model)
  model = base.model()
  params = jax.tree.map(jnp.asarray, base.params)
  bos = midi_tokenizer.BOS
  prompt = np.array([[bos]], np.int32)
  total = 1 + args.length
  rng = jax.random.key(args.seed)
  s = base.settings
  print(f"model {args.model}: {s.n_layers} blocks, d_model {s.d_model}, {s.n_heads} heads, d_ff "
        f"{s.d_ff}, max_len {s.max_len}, vocab {s.vocab_size}; prompt BOS + {args.length} sampled "
        f"tokens, temperature 1, seed {args.seed}; load average {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} CPUs")

  cached(model, params, prompt, args.length, rng)  # compile
  t = time.perf_counter()
  cached_tokens = cached(model, params, prompt, args.length, rng)
  t_cached = time.perf_counter() - t

  warm_recomputed(model, params, total)
  t = time.perf_counter()
  recomputed_tokens = recomputed(model, params, prompt, args.length, rng)
  t_recomputed = time.perf_counter() - t
  same = np.array_equal(cached_tokens, recomputed_tokens)
  if not same:
    first = int(np.flatnonzero(cached_tokens[0] != recomputed_tokens[0])[0])
    raise SystemExit(f"cached and recomputed tokens differ first at position {first}")

  torch.set_num_threads(args.torch_threads)
  twin = TorchMusicTransformer(base.transformer_config(dropout=0.0)).eval()
  twin.load_state_dict(torch_convert.flax_to_state_dict(base.params))
  torch_generate(twin, [bos], 16, args.seed)  # warm up
  t = time.perf_counter()
  torch_tokens, last_logits = torch_generate(twin, [bos], args.length, args.seed)
  t_torch = time.perf_counter() - t
  with torch.inference_mode():
    full = twin(torch.tensor([torch_tokens[:-1]]))[0, -1]
  err = float((full - last_logits).abs().max())
  if err > 1e-3:
    raise SystemExit(f"the twin's cached logits differ from its full forward by {err}")

  rate = lambda sec: args.length / sec
  print(f"lora_jax cached:     {rate(t_cached):,.0f} tokens/s ({t_cached:.2f} s)")
  print(f"lora_jax recomputed: {rate(t_recomputed):,.0f} tokens/s ({t_recomputed:.2f} s); same "
        f"{total} tokens as cached: {same}")
  ratio = t_recomputed / t_cached
  print(f"cached / recomputed: {ratio:.1f}x (target >= 5x: {'met' if ratio >= 5 else 'NOT met'})")
  print(f"PyTorch twin, KV cache (torch {torch.__version__}, {torch.get_num_threads()} threads): "
        f"{rate(t_torch):,.0f} tokens/s ({t_torch:.2f} s); its cached logits within {err:.1e} of "
        f"its full forward")
  print(f"lora_jax cached / PyTorch cached: {t_torch / t_cached:.2f}x")


if __name__ == "__main__":
  main()
