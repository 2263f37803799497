"""One dense kernel [in, out] stored as int8 or NF4 codes with their scales, and back.

  int8          per output channel: codes int8 [in, out], scale float32 [out] = absmax / 127.
  int8_block    per block of 64 values along the input axis: scale float32 [in / 64, out].
  nf4           QLoRA's 4-bit NormalFloat (Dettmers et al. 2023, as bitsandbytes implements it):
                blocks of 64 values along the input axis, each normalised by its absmax and
                rounded to the nearest of the 16 levels (`NF4_LEVELS`, bitsandbytes'
                `get_4bit_type('nf4')`), two codes a byte with the even row in the high nibble,
                as bitsandbytes packs them. The block absmaxes are double-quantised as in the
                paper: their float32 mean is subtracted (one offset per kernel), and the centred
                values are rounded to bitsandbytes' signed 8-bit dynamic map in blocks of 256,
                each with its own float32 absmax.

Quantising runs in numpy on the host (it happens once, when a run starts, and must give the same
codes on any mesh: the offset is a mean, which XLA would sum in a shard-dependent order);
dequantising is jnp and runs inside the jitted forward, one kernel at a time.

Layout is [in, out] like Flax's kernels, and every array of a quantised kernel keeps the input axis
first and the output axis second, so it shards with the kernel's own partition spec. The second
level's 256-blocks run along the output axis of one row of block scales.
"""

from typing import Any

import flax.struct
import jax.numpy as jnp
import numpy as np

KINDS = ("int8", "int8_block", "nf4")
BLOCK = 64  # values per first-level block along the input axis (int8_block, nf4)
BLOCK2 = 256  # block scales per second-level block (nf4's double quantisation)

# bitsandbytes/functional.py get_4bit_type("nf4") (from create_normal_map(offset=0.9677083)).
NF4_LEVELS = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0], np.float32)


def dynamic_map() -> np.ndarray:
  """bitsandbytes' signed 8-bit dynamic map (create_dynamic_map()): 256 sorted float32 values.

  For exponents 10^-6 .. 10^0, 2^i linearly spaced fraction midpoints in [0.1, 1] with each sign,
  then 0 and 1: 2 * 127 + 2 values.
  """
  data = []
  for i in range(7):
    edges = np.linspace(0.1, 1, 2**i + 1, dtype=np.float32)
    means = (edges[:-1] + edges[1:]) / np.float32(2.0)
    step = np.float32(10.0 ** (-6 + i))
    data += list(step * means) + list(-step * means)
  data += [0.0, 1.0]
  return np.sort(np.asarray(data, np.float32))


DYNAMIC_MAP = dynamic_map()


@flax.struct.dataclass
class Int8Kernel:
  """An [in, out] kernel as int8 codes times float32 scales (per channel or per block)."""

  codes: Any  # int8 [in, out]
  scale: Any  # float32 [out] (per channel) or [in / 64, out] (per block)


@flax.struct.dataclass
class NF4Kernel:
  """An [in, out] kernel as packed NF4 codes and double-quantised block absmaxes."""

  codes: Any  # uint8 [in / 2, out]: rows 2j (high nibble) and 2j + 1 (low nibble)
  absmax_codes: Any  # uint8 [in / 64, out]: indices into DYNAMIC_MAP
  absmax_scale: Any  # float32 [in / 64, ceil(out / 256)]: each 256-block's absmax
  absmax_offset: Any  # float32 [1]: the mean block absmax, subtracted before the second level


QUANTIZED = (Int8Kernel, NF4Kernel)


def is_quantized(x: Any) -> bool:
  return isinstance(x, QUANTIZED)


def check_shape(shape: tuple[int, ...], kind: str, where: str) -> None:
  """Raise unless a kernel of `shape` can be stored as `kind` (2-D; blocks divide the input)."""
  if kind not in KINDS:
    raise ValueError(f"quantize kind must be one of {', '.join(KINDS)}, got {kind!r}")
  if len(shape) != 2:
    raise ValueError(f"{where}: only 2-D dense kernels are quantised, got shape {shape}")
  if kind != "int8" and shape[0] % BLOCK:
    raise ValueError(f"{where}: input dimension {shape[0]} of kernel {shape} is not divisible by "
                     f"the {kind} block of {BLOCK}")


def _nearest(values: np.ndarray, levels: np.ndarray) -> np.ndarray:
  """Index of the nearest sorted level; a tie goes to the lower one (torch.bucketize, as bnb)."""
  bounds = (levels[:-1] + levels[1:]) / np.float32(2.0)
  return np.searchsorted(bounds, values, side="left").astype(np.uint8)


def _normalised(blocks: np.ndarray, absmax: np.ndarray) -> np.ndarray:
  # bnb multiplies by the reciprocal and clamps, so a block's extreme maps to exactly +-1.
  inv = np.float32(1.0) / np.maximum(absmax, np.float32(1e-38))
  return np.clip(blocks * inv, -1.0, 1.0)


def quantize(kernel: Any, kind: str, where: str = "kernel") -> Int8Kernel | NF4Kernel:
  """`kernel` [in, out] (any float dtype, host or device) quantised as `kind`, numpy leaves."""
  w = np.asarray(kernel, np.float32)
  check_shape(w.shape, kind, where)
  n_in, n_out = w.shape
  if kind == "int8":
    scale = np.abs(w).max(axis=0) / np.float32(127.0)
    codes = np.rint(w / np.maximum(scale, np.float32(1e-38)))
    return Int8Kernel(np.clip(codes, -127, 127).astype(np.int8), scale.astype(np.float32))
  blocks = w.reshape(n_in // BLOCK, BLOCK, n_out)
  absmax = np.abs(blocks).max(axis=1)  # [in / 64, out]
  if kind == "int8_block":
    scale = absmax / np.float32(127.0)
    codes = np.rint(blocks / np.maximum(scale, np.float32(1e-38))[:, None, :])
    return Int8Kernel(np.clip(codes, -127, 127).astype(np.int8).reshape(n_in, n_out),
                      scale.astype(np.float32))
  codes = _nearest(_normalised(blocks, absmax[:, None, :]), NF4_LEVELS).reshape(n_in, n_out)
  packed = (codes[0::2] << 4) | codes[1::2]
  offset = np.float32(absmax.astype(np.float64).mean())
  centred = absmax - offset
  pad = -n_out % BLOCK2
  centred_p = np.pad(centred, ((0, 0), (0, pad))).reshape(n_in // BLOCK, -1, BLOCK2)
  scale2 = np.abs(centred_p).max(axis=2)  # [in / 64, ceil(out / 256)]
  absmax_codes = _nearest(_normalised(centred_p, scale2[:, :, None]), DYNAMIC_MAP)
  absmax_codes = absmax_codes.reshape(n_in // BLOCK, -1)[:, :n_out]
  return NF4Kernel(packed.astype(np.uint8), absmax_codes, scale2.astype(np.float32),
                   np.asarray([offset], np.float32))


def block_absmax(q: NF4Kernel) -> jnp.ndarray:
  """The float32 block absmaxes [in / 64, out] of an NF4 kernel, from their second level."""
  n_out = q.absmax_codes.shape[1]
  scale2 = jnp.repeat(jnp.asarray(q.absmax_scale), BLOCK2, axis=1)[:, :n_out]
  return jnp.asarray(DYNAMIC_MAP)[q.absmax_codes.astype(jnp.int32)] * scale2 + q.absmax_offset


def dequantize(q: Int8Kernel | NF4Kernel, dtype: Any = jnp.float32, tie: Any = 0.0) -> jnp.ndarray:
  """The [in, out] kernel that `q` stores, computed in float32 and returned as `dtype`.

  `tie`, a float32 scalar that is zero (0 times some value), is added where the codes become
  floats: it changes nothing but makes the whole dequantisation wait for that value (see
  `lora_jax.quant.dense`).
  """
  if isinstance(q, Int8Kernel):
    codes = q.codes.astype(jnp.float32) + tie
    if q.scale.ndim == 1:
      return (codes * q.scale).astype(dtype)
    n_in, n_out = codes.shape
    blocks = codes.reshape(n_in // BLOCK, BLOCK, n_out) * q.scale[:, None, :]
    return blocks.reshape(n_in, n_out).astype(dtype)
  packed = q.codes
  half, n_out = packed.shape
  codes = jnp.stack([packed >> 4, packed & 0xF], axis=1).reshape(2 * half, n_out)
  values = (jnp.asarray(NF4_LEVELS) + tie)[codes.astype(jnp.int32)]
  blocks = values.reshape(2 * half // BLOCK, BLOCK, n_out) * block_absmax(q)[:, None, :]
  return blocks.reshape(2 * half, n_out).astype(dtype)


def nbytes(q: Any) -> int:
  """Bytes of the arrays a (quantised or plain) kernel holds."""
  if is_quantized(q):
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
               for x in (getattr(q, f) for f in q.__dataclass_fields__))
  return int(np.prod(q.shape)) * np.dtype(q.dtype).itemsize
