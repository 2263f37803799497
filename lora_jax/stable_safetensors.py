"""safetensors files that are the same bytes for the same tensors and metadata.

The safetensors writer keeps metadata in a hash map whose order changes from process to process,
so the same adapter saved twice differed in its header and no file could be compared or cached by
its hash. Here the library lays out the data (its order is fixed: by dtype, then name) and the
header is rewritten canonically: metadata keys sorted, tensors in data order, compact JSON,
padded with spaces to 8 bytes as the format asks.
"""

import json
import struct
from typing import Mapping

import safetensors.numpy

from lora_jax import atomic


def canonical(blob: bytes) -> bytes:
  """The same file with its header in the canonical order (data untouched)."""
  (size,) = struct.unpack("<Q", blob[:8])
  header = json.loads(blob[8:8 + size])
  metadata = header.pop("__metadata__", None)
  ordered = {}
  if metadata:
    ordered["__metadata__"] = dict(sorted(metadata.items()))
  for name in sorted(header, key=lambda n: (header[n]["data_offsets"], n)):
    ordered[name] = header[name]
  text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
  text += b" " * (-len(text) % 8)
  return struct.pack("<Q", len(text)) + text + blob[8 + size:]


def save_numpy(arrays: Mapping, path: str, metadata: Mapping[str, str] | None = None) -> None:
  """`safetensors.numpy.save_file`, canonical and atomic."""
  _write(path, safetensors.numpy.save(dict(arrays), metadata=dict(metadata or {}) or None))


def save_torch(tensors: Mapping, path: str, metadata: Mapping[str, str] | None = None) -> None:
  """`safetensors.torch.save_file`, canonical and atomic."""
  import safetensors.torch  # pylint: disable=g-import-not-at-top; torch only for torch files
  _write(path, safetensors.torch.save(dict(tensors), metadata=dict(metadata or {}) or None))


def _write(path: str, blob: bytes) -> None:
  with atomic.atomic_path(path) as tmp, open(tmp, "wb") as f:
    f.write(canonical(blob))
