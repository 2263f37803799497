"""On an NVIDIA GPU: cuDNN flash attention (the dispatch's 'cudnn' path) against XLA's reference
attention, alone and inside the music transformer's bfloat16 LoRA step and cached sampling.

    python bench/gpu_attention_check.py [--out=results.json] [--small]

Prints, per case, the path the dispatch chose, the largest difference from a float32 reference
for both paths (outputs and input gradients), and the median time of each; then the LoRA train
step (loss, gradient difference and step time) and greedy cached sampling (tokens that agree,
tokens/s) of a music transformer with each path. Off a GPU it runs the XLA side only (a dry run
of the script). Nothing here is asserted: the figures are for the README.
"""

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lora_jax import lora
from lora_jax.models import attention as attention_lib
from lora_jax.models import attention_dispatch
from lora_jax.models import decode
from lora_jax.models.transformer import MusicTransformer, TransformerConfig

ON_GPU = jax.default_backend() == "gpu"


def _median_ms(fn, *args, repeats=20):
  jax.block_until_ready(fn(*args))  # compile and warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append((time.perf_counter() - start) * 1e3)
  return statistics.median(times)


class _Forced:
  """Within the block, the dispatch answers `path` for every call (an A/B in one process)."""

  def __init__(self, path):
    self.path, self.saved = path, None

  def __enter__(self):
    self.saved = attention_dispatch.choose
    jax.clear_caches()  # module-level jits (cached sampling) would keep the other path's trace
    attention_lib.dispatch.choose = lambda call: (self.path, "forced by the bench")

  def __exit__(self, *exc):
    attention_lib.dispatch.choose = self.saved
    jax.clear_caches()


def _paths():
  return ("cudnn", "xla") if ON_GPU else ("xla",)


def attention_case(name, b, t, s, h, d, train=True, **kwargs):
  keys = jax.random.split(jax.random.key(0), 4)
  q = jax.random.normal(keys[0], (b, t, h, d), jnp.float32)
  k, v = (jax.random.normal(key, (b, s, h, d), jnp.float32) for key in keys[1:3])
  w = jax.random.normal(keys[3], (b, t, h, d), jnp.float32)
  lengths = kwargs.pop("kv_lengths", None)
  mask = kwargs.pop("mask", None)
  extra = dict(kwargs)
  if lengths is not None:
    extra["kv_lengths_B"] = lengths
  if mask is not None:
    extra["mask"] = mask
  ref_extra = dict(kwargs, mask=mask if lengths is None else attention_lib._length_mask(lengths, s))
  reference = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla",
                                                           **ref_extra)
  loss = lambda fn: (lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32) * w))
  want = reference(q, k, v)
  want_grads = jax.grad(loss(reference), (0, 1, 2))(q, k, v) if train else None
  half = [x.astype(jnp.bfloat16) for x in (q, k, v)]
  call = attention_dispatch.Call(
      backend=jax.default_backend(), dtype="bfloat16", q_len=t, kv_len=s, head_dim=d,
      causal=kwargs.get("is_causal", False),
      mask=attention_dispatch.mask_kind(mask, lengths),
      gpu_capability=attention_lib._gpu_capability())
  row = {"case": name, "shape": [b, t, s, h, d], "chosen": attention_dispatch.choose(call)}
  for path in _paths():
    try:
      row[path] = _measure(path, extra, loss, half, want, want_grads, train)
    except (NotImplementedError, ValueError) as e:  # a shape cuDNN refuses: recorded, not fatal
      row[path] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0]}"}
  return row


def _measure(path, extra, loss, half, want, want_grads, train):
  with _Forced(path):
    fn = jax.jit(lambda q, k, v: attention_lib.attention(q, k, v, **extra))
    out = fn(*half)
    row = {"out_err": float(jnp.max(jnp.abs(out.astype(jnp.float32) - want))),
           "fwd_ms": _median_ms(fn, *half)}
    if train:  # cached decoding is never differentiated
      grad_fn = jax.jit(jax.grad(loss(lambda q, k, v: attention_lib.attention(q, k, v, **extra)),
                                 (0, 1, 2)))
      grads = grad_fn(*half)
      row["grad_err"] = max(float(jnp.max(jnp.abs(g.astype(jnp.float32) - r)))
                            for g, r in zip(grads, want_grads))
      row["fwd_bwd_ms"] = _median_ms(grad_fn, *half)
  return row


def _model(small):
  if small:
    return TransformerConfig(vocab_size=256, d_model=64, n_heads=2, n_layers=2, d_ff=128,
                             max_len=128, dropout=0.0, dtype="bfloat16")
  return TransformerConfig(vocab_size=2048, d_model=1024, n_heads=8, n_layers=8, d_ff=4096,
                           max_len=1024, dropout=0.0, dtype="bfloat16")


def lora_step_case(config, batch):
  model = MusicTransformer(config)
  tokens = jax.random.randint(jax.random.key(1), (batch, config.max_len + 1), 0,
                              config.vocab_size)
  params = model.init(jax.random.key(0), tokens[:, :8])["params"]
  spec = lora.LoraSpec(rank=16, alpha=32.0, target_modules=("q_proj", "k_proj", "v_proj",
                                                            "out_proj", "ff.in", "ff.out"))
  targets = lora.resolve(spec, params)
  adapter = lora.init_adapter(targets, spec, jax.random.key(2))
  adapter = adapter.replace(params=jax.tree.map(lambda x: x + 0.01, adapter.params))
  tx = optax.adamw(1e-4)

  def loss_fn(factors, base, x, y):
    logits = lora.apply(model, base, [lora.Active(lora.Adapter(factors, adapter.scales))], x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def step(factors, opt_state, base, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(factors, base, x, y)
    updates, opt_state = tx.update(grads, opt_state, factors)
    return optax.apply_updates(factors, updates), opt_state, loss, grads

  x, y = tokens[:, :-1], tokens[:, 1:]
  row = {"case": "music transformer LoRA step", "config": config.__dict__, "batch": batch}
  results = {}
  for path in _paths():
    with _Forced(path):
      fn = jax.jit(step)
      _, _, loss, grads = fn(adapter.params, tx.init(adapter.params), params, x, y)
      results[path] = (float(loss), grads)
      ms = _median_ms(fn, adapter.params, tx.init(adapter.params), params, x, y, repeats=10)
      row[path] = {"loss": float(loss), "step_ms": ms,
                   "tokens_per_s": batch * config.max_len / (ms / 1e3)}
  if len(results) == 2:
    (_, ga), (_, gb) = results["cudnn"], results["xla"]
    row["max_grad_diff"] = max(float(jnp.max(jnp.abs(a - b)))
                               for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)))
    row["max_grad"] = max(float(jnp.max(jnp.abs(b))) for b in jax.tree.leaves(gb))
  return row


def sampling_case(config, batch, length):
  model = MusicTransformer(config)
  params = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
  prompt = jax.random.randint(jax.random.key(3), (batch, 8), 0, config.vocab_size)
  row = {"case": "greedy cached sampling", "batch": batch, "tokens": length}
  outs = {}
  for path in _paths():
    with _Forced(path):
      # Warm-up compiles; the second call is timed.
      jax.block_until_ready(decode.sample(model, params, prompt, length, temperature=0.0))
      start = time.perf_counter()
      outs[path] = np.asarray(decode.sample(model, params, prompt, length, temperature=0.0))
      seconds = time.perf_counter() - start
      row[path] = {"tokens_per_s": batch * length / seconds}
  if len(outs) == 2:
    row["same_tokens"] = float(np.mean(outs["cudnn"] == outs["xla"]))
  return row


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", default="")
  parser.add_argument("--small", action="store_true", help="tiny sizes (a dry run on CPU)")
  args = parser.parse_args()
  device = jax.devices()[0]
  info = {"device": str(device.device_kind), "jax": jax.__version__,
          "backend": jax.default_backend(),
          "capability": attention_lib._gpu_capability()}
  print(json.dumps(info))
  n = 1 if args.small else 8
  t = 128 if args.small else 2048
  rows = [
      attention_case("causal self-attention", n, t, t, 8, 64, is_causal=True),
      attention_case("causal self-attention, odd length", n, 301, 301, 8, 64, is_causal=True),
      attention_case("causal self-attention, head 128", n, t, t, 8, 128, is_causal=True),
      attention_case("cached decoding (1 query, key lengths)", n, 1, t, 8, 64, train=False,
                     kv_lengths=jnp.full((n,), t // 2 + 1, jnp.int32)),
      attention_case("key padding mask [B,1,1,S]", n, t // 4, t // 4, 8, 64,
                     mask=(jnp.arange(t // 4) < t // 8)[None, None, None, :].repeat(n, 0)),
  ]
  config = _model(args.small)
  rows.append(lora_step_case(config, 2 if args.small else 8))
  rows.append(sampling_case(config, 2 if args.small else 8, 16 if args.small else 256))
  for row in rows:
    print(json.dumps(row))
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"info": info, "rows": rows}, f, indent=1)


if __name__ == "__main__":
  main()
