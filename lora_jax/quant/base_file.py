"""A quantised base as one safetensors file: codes, scales and what they mean.

Keys are the dotted parameter paths, a quantised kernel's arrays under its own path
(`blocks.0.attn.q_proj.kernel.codes`, `.absmax_codes`, `.absmax_scale`, `.absmax_offset` for NF4;
`.codes`, `.scale` for int8). The header's metadata names the kind and the block sizes, and the
NF4 levels and the 8-bit map the codes index (as JSON), so the file is readable without this
code. Loading checks every name, shape and dtype against the model's abstract tree.
"""

import json
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy

from lora_jax import atomic, tree_paths
from lora_jax.interop.flax_weights import WeightFileError, check_names_and_shapes
from lora_jax.quant import base, kernels

FORMAT = "lora_jax.quantized_base/1"


def _dotted(tree: Any) -> dict[str, Any]:
  return {tree_paths.dotted(keys): leaf for keys, leaf in tree_paths.flatten(tree).items()}


def save(params: Any, path: str, kind: str, metadata: Mapping[str, str] | None = None) -> None:
  """Write a quantised base tree (`quant.quantize_tree`) to `path`, atomically."""
  if kind not in kernels.KINDS:
    raise ValueError(f"quantize kind must be one of {', '.join(kernels.KINDS)}, got {kind!r}")
  plain = {str(np.dtype(x.dtype)) for x in jax.tree.leaves(params, is_leaf=kernels.is_quantized)
           if not kernels.is_quantized(x) and jnp.issubdtype(x.dtype, jnp.floating)}
  if len(plain) > 1:
    raise ValueError(f"the base's unquantised leaves mix dtypes {sorted(plain)}; one is stored")
  header = {**dict(metadata or {}), "format": FORMAT, "quantize": kind,
            "base_dtype": plain.pop() if plain else "float32",
            "block": str(kernels.BLOCK), "block2": str(kernels.BLOCK2),
            "nf4_levels": json.dumps(kernels.NF4_LEVELS.tolist()),
            "absmax_map": json.dumps(kernels.DYNAMIC_MAP.tolist())}
  arrays = {k: np.ascontiguousarray(np.asarray(v)) for k, v in _dotted(params).items()}
  with atomic.atomic_path(path) as tmp:
    safetensors.numpy.save_file(arrays, tmp, metadata=header)


def quantize_file(src: str, dst: str, kind: str, dtype: str) -> dict[str, str]:
  """Quantise a Flax-native base file (dotted keys) into a quantised base file; its metadata.

  The source's own metadata is kept (the model's size, for one), its `format` recorded as
  `source_format`. Read back with `load` and the model's abstract tree.
  """
  if not os.path.isfile(src):
    raise WeightFileError(f"no such weight file: {src}")
  try:
    f = safetensors.safe_open(src, framework="np")
  except Exception as e:  # the Rust reader raises SafetensorError for any malformed file
    raise WeightFileError(f"cannot read {src} as safetensors: {e}") from e
  with f:
    meta = dict(f.metadata() or {})
    flat = {tuple(name.split(".")): f.get_tensor(name) for name in f.keys()}
  tree = base.quantize_tree(tree_paths.unflatten(flat), kind, dtype)
  if "format" in meta:
    meta["source_format"] = meta.pop("format")
  save(tree, dst, kind, {**meta, "source_file": os.path.basename(src)})
  return meta


def load(path: str, abstract_float: Any) -> tuple[Any, dict[str, str]]:
  """(the quantised base tree as host arrays, the file's metadata), checked against the model."""
  if not os.path.isfile(path):
    raise WeightFileError(f"no such quantised base file: {path}")
  try:
    f = safetensors.safe_open(path, framework="np")
  except Exception as e:  # the Rust reader raises SafetensorError for any malformed file
    raise WeightFileError(f"cannot read {path} as safetensors: {e}") from e
  with f:
    meta = dict(f.metadata() or {})
    if meta.get("format") != FORMAT:
      raise WeightFileError(f"{path} is not a quantised base (format {meta.get('format')!r}, "
                            f"expected {FORMAT!r})")
    kind = meta["quantize"]
    names = list(f.keys())
    arrays = {n: f.get_tensor(n) for n in names}
  dtype = meta["base_dtype"]
  abstract = _dotted(base.abstract_tree(abstract_float, kind, dtype))
  check_names_and_shapes({k: tuple(v.shape) for k, v in abstract.items()},
                         {k: tuple(v.shape) for k, v in arrays.items()}, os.path.basename(path))
  wrong = [f"{k} is {arrays[k].dtype}, expected {np.dtype(v.dtype)}" for k, v in abstract.items()
           if arrays[k].dtype != np.dtype(v.dtype)]
  if wrong:
    raise WeightFileError(f"dtype mismatch in {os.path.basename(path)}: {wrong[0]}"
                          + (f" (+{len(wrong) - 1} more)" if len(wrong) > 1 else ""))
  structure = base.abstract_tree(abstract_float, kind, dtype)
  order = [tree_paths.dotted(k) for k in tree_paths.flatten(structure)]
  return jax.tree.unflatten(jax.tree.structure(structure), [arrays[n] for n in order]), meta
