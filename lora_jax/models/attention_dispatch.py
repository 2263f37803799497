"""Which attention implementation runs for a call: a pure decision over backend, dtype and shapes.

`choose(Call)` returns the path and the reason, and `attention` (models/attention.py) runs it. The
decision is a function of facts known at trace time, so it is tested on any machine for every
backend (tests/attention_dispatch_test.py); each distinct decision is logged once per process.

The paths:
- 'cpu_compiled': the C++/Eigen causal kernel (lora_jax/kernels) for float32 unmasked causal
  self-attention on CPU, when built; bfloat16 too, upcast to float32 around it.
- 'cpu_blockwise': the blockwise jnp causal kernel with a flash-style gradient, on CPU otherwise.
- 'cpu_float16': spelled-out float16 attention (XLA:CPU has no f16 x f16 -> f32 dot, which
  jax.nn's gradient uses).
- 'cudnn': cuDNN's fused flash attention through `jax.nn.dot_product_attention(implementation=
  'cudnn')` on NVIDIA GPUs, for bfloat16/float16 with a head size cuDNN takes (a multiple of 8,
  at most 128, or 256 from Hopper on) and even lengths (or one query). Causal, unmasked, a
  key-length prefix (cached decoding) and a boolean mask (given to cuDNN as a bias) all run there.
- 'pallas_tpu': the Pallas flash-attention kernel (`jax.experimental.pallas.ops.tpu`) on TPU, for
  unmasked self-attention (causal or not) of lengths that are multiples of its 128-wide blocks.
- 'xla': `jax.nn.dot_product_attention(implementation='xla')`, XLA's reference attention, which
  forms the whole [B, H, T, S] score tensor. It is what runs when nothing above applies (float32
  on a GPU, a masked call on TPU, one decoding query on TPU).
"""

import dataclasses

import numpy as np

PATHS = ("cpu_compiled", "cpu_blockwise", "cpu_float16", "cudnn", "pallas_tpu", "xla")
MASKS = ("none", "lengths", "boolean")  # no mask; a key-length prefix per row; an arbitrary mask
TPU_BLOCK = 128  # the Pallas kernel's query and key blocks (its lane width)


@dataclasses.dataclass(frozen=True)
class Call:
  """What an attention call is, as far as choosing its implementation goes."""

  backend: str  # jax.default_backend(): 'cpu', 'gpu' (or 'cuda', 'rocm'), 'tpu'
  dtype: str  # of q, k and v
  q_len: int
  kv_len: int
  head_dim: int
  causal: bool
  mask: str  # one of MASKS
  cpu_kernel_built: bool = False
  gpu_capability: float | None = None  # CUDA compute capability, e.g. 9.0 for H100/H200
  gpu_vendor: str = "nvidia"  # 'nvidia' or 'amd' (ROCm has no cuDNN)

  def __post_init__(self):
    if self.mask not in MASKS:
      raise ValueError(f"attention mask kind {self.mask!r} is not one of {MASKS}")


def _cudnn_head_dims(capability: float | None) -> int:
  return 256 if capability is not None and capability >= 9.0 else 128


def choose(call: Call) -> tuple[str, str]:
  """(path, why) for `call`; see the module docstring."""
  half = call.dtype in ("bfloat16", "float16")
  if call.backend == "cpu":
    self_attention = call.q_len == call.kv_len
    if call.causal and call.mask == "none" and self_attention:
      if call.dtype in ("float32", "bfloat16") and call.cpu_kernel_built:
        if call.dtype == "bfloat16":
          # XLA:CPU computes bfloat16 dots in float32 anyway (dense_dispatch's docstring), so the
          # float32 kernel over upcast q, k, v is both faster and no less exact.
          return "cpu_compiled", ("bfloat16 causal self-attention, upcast to the float32 "
                                  "compiled kernel")
        return "cpu_compiled", "float32 causal self-attention and the compiled kernel is built"
      why = ("the compiled kernel is not built" if call.dtype in ("float32", "bfloat16")
             else f"the compiled kernel takes float32 or bfloat16, not {call.dtype}")
      return "cpu_blockwise", f"causal self-attention; {why}"
    if call.dtype == "float16":
      return "cpu_float16", "float16 masked or non-causal attention on CPU"
    return "xla", "masked or non-causal attention on CPU"

  if call.backend in ("gpu", "cuda", "rocm"):
    if call.backend == "rocm" or call.gpu_vendor != "nvidia":
      return "xla", "cuDNN attention needs an NVIDIA GPU"
    if not half:
      return "xla", (f"cuDNN flash attention takes bfloat16 or float16, not {call.dtype} "
                     "(train with training.precision='bfloat16' for it)")
    limit = _cudnn_head_dims(call.gpu_capability)
    if call.head_dim % 8 or call.head_dim > limit:
      return "xla", (f"cuDNN flash attention needs a head size that is a multiple of 8 and at "
                     f"most {limit}, not {call.head_dim}")
    if call.q_len != 1 and (call.q_len % 2 or call.kv_len % 2):
      # cuDNN refused 301 x 301 causal attention on an H200 (bench/gpu_attention_check.py); one
      # query is cached decoding, which it takes.
      return "xla", (f"cuDNN flash attention needs even lengths, not {call.q_len} queries x "
                     f"{call.kv_len} keys")
    return "cudnn", f"{call.dtype} on an NVIDIA GPU, head size {call.head_dim}"

  if call.backend == "tpu":
    if call.mask != "none":
      return "xla", "the Pallas flash kernel takes no mask"
    if call.causal and call.q_len != call.kv_len:
      return "xla", f"causal attention of {call.q_len} queries over {call.kv_len} keys"
    for name, n in (("query", call.q_len), ("key", call.kv_len)):
      if n % TPU_BLOCK:
        return "xla", (f"{n} {name} positions are not a multiple of the Pallas kernel's "
                       f"{TPU_BLOCK}-wide blocks")
    if call.head_dim > TPU_BLOCK and call.head_dim % TPU_BLOCK:
      return "xla", (f"the Pallas kernel takes head sizes up to 128 or multiples of it, not "
                     f"{call.head_dim}")
    return "pallas_tpu", f"{call.dtype} self-attention of length {call.q_len} on TPU"

  return "xla", f"no fused attention for backend {call.backend!r}"


def mask_kind(mask, kv_lengths) -> str:
  """The `MASKS` kind of an attention call's mask arguments."""
  if mask is not None and kv_lengths is not None:
    raise ValueError("give attention a mask or key lengths, not both")
  if kv_lengths is not None:
    return "lengths"
  return "none" if mask is None else "boolean"


def dtype_name(x) -> str:
  return np.dtype(x.dtype).name
