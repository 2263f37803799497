"""A model as several safetensors files and an index, as large PyTorch checkpoints are stored.

The layout of Hugging Face's sharded checkpoints: `model-00001-of-00003.safetensors`, ... and
`model.safetensors.index.json` = {"metadata": {"total_size": bytes of all tensors},
"weight_map": {tensor name: file}}, tensors packed into files in order, a new file begun when the
next tensor would pass the size limit (a tensor larger than the limit gets a file of its own).

Written one tensor at a time: every file's header is laid out from the shapes and dtypes alone,
then each tensor is fetched (`fetch`, e.g. a sharded jax.Array gathered to the host), written and
dropped, so the host never holds more than the largest tensor -- never the model, nor one file.
All files appear together or not at all (`atomic.atomic_paths`), the index last; shard files of
an earlier export in the same folder that the new index does not name are removed after it.
Headers are canonical as in `stable_safetensors` (sorted metadata, data order, compact JSON).
"""

import dataclasses
import json
import os
import re
import struct
from typing import Any, Callable, Iterator, Mapping, Sequence

import ml_dtypes
import numpy as np

from lora_jax import atomic, errors

INDEX = "model.safetensors.index.json"
_SHARD = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16",
           np.dtype(ml_dtypes.bfloat16): "BF16", np.dtype(np.float64): "F64",
           np.dtype(np.int32): "I32", np.dtype(np.int64): "I64", np.dtype(np.int8): "I8",
           np.dtype(np.uint8): "U8", np.dtype(np.bool_): "BOOL"}
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20,
          "GIB": 2**30}
# Columns of a kernel transposed and written per chunk: the transposed copy stays this small.
_CHUNK_BYTES = 1 << 24


def shard_name(i: int, n: int) -> str:
  """The file name of shard `i` (from 1) of `n`, Hugging Face's."""
  return f"model-{i:05d}-of-{n:05d}.safetensors"


def parse_size(text: str) -> int:
  """Bytes of a size written as 5GB, 500MB, 2GiB or a plain number of bytes."""
  match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
  unit = match.group(2).upper() if match else None
  if match is None or unit not in _UNITS or float(match.group(1)) * _UNITS[unit] < 1:
    raise errors.UserError(f"shard size {text!r} is not a size like 5GB, 500MB, 2GiB or a "
                           "number of bytes (at least 1)")
  return int(float(match.group(1)) * _UNITS[unit])


@dataclasses.dataclass(frozen=True)
class Tensor:
  """One tensor to write: its name, shape and dtype, and how to get its values.

  `fetch()` returns the array to store; with `transposed`, the array's transpose is stored
  (a Flax kernel [in, out] as torch's weight [out, in]) without a whole transposed copy.
  """

  name: str
  shape: tuple[int, ...]  # the stored shape (transposed if `transposed`)
  dtype: np.dtype
  fetch: Callable[[], Any]
  transposed: bool = False

  @property
  def nbytes(self) -> int:
    return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def plan(tensors: Sequence[Tensor], max_bytes: int) -> list[list[Tensor]]:
  """Tensors in order, packed into files of at most `max_bytes` each (a larger tensor alone)."""
  files: list[list[Tensor]] = []
  size = 0
  for t in tensors:
    if not files or (files[-1] and size + t.nbytes > max_bytes):
      files.append([])
      size = 0
    files[-1].append(t)
    size += t.nbytes
  return files


def _header(tensors: Sequence[Tensor], metadata: Mapping[str, str]) -> bytes:
  header: dict[str, Any] = {}
  if metadata:
    header["__metadata__"] = dict(sorted(metadata.items()))
  offset = 0
  for t in tensors:
    header[t.name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape),
                      "data_offsets": [offset, offset + t.nbytes]}
    offset += t.nbytes
  text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
  text += b" " * (-len(text) % 8)
  return struct.pack("<Q", len(text)) + text


def _chunks(t: Tensor) -> Iterator[bytes]:
  values = np.asarray(t.fetch())
  if values.dtype != t.dtype or values.shape != (t.shape[::-1] if t.transposed else t.shape):
    raise ValueError(f"{t.name}: fetched {values.dtype} {values.shape}, planned {t.dtype} "
                     f"{t.shape}{' transposed' if t.transposed else ''}")  # a bug in the caller
  if not t.transposed:
    yield np.ascontiguousarray(values).tobytes()
    return
  rows = values.shape[0]
  step = max(1, _CHUNK_BYTES // max(1, rows * values.dtype.itemsize))
  for start in range(0, values.shape[1], step):
    yield np.ascontiguousarray(values[:, start:start + step].T).tobytes()


def _write_file(path: str, tensors: Sequence[Tensor], metadata: Mapping[str, str]) -> None:
  with open(path, "wb") as f:
    f.write(_header(tensors, metadata))
    for t in tensors:
      written = sum(f.write(chunk) for chunk in _chunks(t))
      if written != t.nbytes:
        raise ValueError(f"{t.name}: wrote {written} bytes, planned {t.nbytes}")


def save(tensors: Sequence[Tensor], folder: str, max_bytes: int,
         metadata: Mapping[str, str] | None = None) -> list[str]:
  """Write `tensors` as shard files and the index into `folder`; the paths written, index last.

  `metadata` goes into every file's header (`format: pt` is added, which transformers asks of a
  safetensors file it loads).
  """
  if os.path.exists(folder) and not os.path.isdir(folder):
    raise errors.UserError(f"output {folder} is a file; the sharded export writes a folder")
  names = [t.name for t in tensors]
  if len(set(names)) != len(names):
    raise ValueError(f"two tensors are named {next(n for n in names if names.count(n) > 1)}")
  unknown = sorted({t.dtype.name for t in tensors if t.dtype not in _DTYPES})
  if unknown:
    raise errors.UserError(f"cannot store dtypes {unknown} in safetensors")
  files = plan(tensors, max_bytes)
  paths = [os.path.join(folder, shard_name(i + 1, len(files))) for i in range(len(files))]
  index = {"metadata": {"total_size": sum(t.nbytes for t in tensors)},
           "weight_map": dict(sorted((t.name, os.path.basename(p))
                                     for p, file in zip(paths, files) for t in file))}
  header_metadata = {"format": "pt", **(metadata or {})}
  with atomic.atomic_paths(*paths, os.path.join(folder, INDEX)) as tmps:
    for tmp, file in zip(tmps, files):
      _write_file(tmp, file, header_metadata)
    with open(tmps[-1], "w") as f:
      json.dump(index, f, indent=2)
      f.write("\n")
  written = {os.path.basename(p) for p in paths}
  for name in os.listdir(folder):
    if _SHARD.fullmatch(name) and name not in written:
      os.remove(os.path.join(folder, name))  # a shard of an earlier export, in no index now
  return paths + [os.path.join(folder, INDEX)]


def read_index(folder: str, error: type[Exception] = errors.UserError) -> dict[str, str]:
  """{tensor name: shard path} from a folder's index, each shard checked to exist."""
  path = os.path.join(folder, INDEX)
  if not os.path.isfile(path):
    raise error(f"{folder} has no {INDEX}")
  try:
    with open(path) as f:
      weight_map = json.load(f)["weight_map"]
  except (ValueError, KeyError, TypeError) as e:
    raise error(f"{path} is not a safetensors index (a JSON object with a weight_map): "
                f"{e}") from e
  if not isinstance(weight_map, dict) or not all(
      isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
    raise error(f"{path}: weight_map is not a {{tensor name: file name}} object")
  out = {}
  for name, file in weight_map.items():
    if os.path.basename(file) != file:
      raise error(f"{path}: {name} is in {file!r}, which is not a file in the folder")
    out[name] = os.path.join(folder, file)
  missing = sorted({p for p in out.values() if not os.path.isfile(p)})
  if missing:
    raise error(f"{path} names shard {os.path.basename(missing[0])}, which is missing")
  return out


def load_torch(folder: str, error: type[Exception] = errors.UserError) -> dict:
  """The state dict of a sharded safetensors folder, every file's tensors exactly its index's."""
  import safetensors.torch  # pylint: disable=g-import-not-at-top; torch only for torch files
  where = read_index(folder, error)
  state_dict = {}
  for path in sorted(set(where.values())):
    try:
      tensors = safetensors.torch.load_file(path)
    except Exception as e:  # the Rust reader raises SafetensorError for any malformed file
      raise error(f"cannot read {path} as safetensors: {e}") from e
    named = {n for n, p in where.items() if p == path}
    if set(tensors) != named:
      extra = sorted(set(tensors) ^ named)
      raise error(f"{path} holds tensors that differ from the index's weight_map: {extra[0]}"
                  f"{f' (+{len(extra) - 1} more)' if len(extra) > 1 else ''}")
    state_dict.update(tensors)
  return state_dict
