"""Adapters in ComfyUI's LoRA naming, as safetensors, DoRA included.

ComfyUI's naming (`lora_unet_` + path with `_` for `.`, `.lora_down.weight`, `.lora_up.weight`,
`.alpha`) is written and read as safetensors. DoRA goes in ComfyUI's `.dora_scale` key, which
its `weight_adapter/base.py::weight_decompose` reads (ComfyUI 0.3.x): with V = W + (alpha / rank)
up @ down on torch's [out, in] weight, a `dora_scale` of shape [out, 1] gives
    W' = V * dora_scale / (||W|| + eps)     (norm per output row of the BASE weight W)
and one of shape [1, in] normalises V per input column instead (LyCORIS' default axis). PEFT's and
lora_jax's DoRA is W' = V * m / ||V|| per output row, so the file holds
`dora_scale = m (||W|| + eps) / ||V||` ([out, 1], eps of float32, computed from the base, which
writing and reading then need), and reading inverts it; a [1, in] scale has no equivalent here and
is refused. ComfyUI releases before the output-axis branch normalise every `dora_scale` per input
column, where such a file means another function.
Module paths map through `lora_jax.interop.loraw.torch_module_paths`, the converters' table.
"""

import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.torch
import torch

from lora_jax import atomic, tree_paths
from lora_jax.interop import torch_convert
from lora_jax.interop.loraw import LorawFormatError, abstract_kernels, torch_module_paths
from lora_jax.lora.adapter import MAGNITUDE, Adapter
from lora_jax.lora.adapter_file import AdapterRecord
from lora_jax.lora.compat import IncompatibleAdapterError, check_adapter
from lora_jax.lora.spec import LoraSpec

COMFYUI_PREFIX = "lora_unet_"
_EPS = float(np.finfo(np.float32).eps)  # ComfyUI adds torch.finfo(weight.dtype).eps to the norm


def _comfy_stem(prefix: str, name: str) -> str:
  return COMFYUI_PREFIX + (prefix + name).replace(".", "_").replace("/", "_")


def _norms(kernel, a, b, scale) -> tuple[np.ndarray, np.ndarray]:
  """(||W||, ||W + s A B||) per output, in float64 from float32 values ([in, out] Flax kernel)."""
  w = np.asarray(kernel, np.float32).astype(np.float64)
  v = w + float(scale) * (np.asarray(a, np.float64) @ np.asarray(b, np.float64))
  return np.linalg.norm(w, axis=0), np.linalg.norm(v, axis=0)


def _dora_kernels(adapter: Adapter, base_params: Any, what: str) -> dict:
  """{module keys: the base kernel} of the DoRA modules; the base must hold weights."""
  if not adapter.magnitudes():
    return {}
  if base_params is None:
    raise LorawFormatError(f"{what} a DoRA adapter in ComfyUI's naming needs the base: its "
                           "dora_scale is relative to the base weight's norm")
  flat = tree_paths.flatten(base_params)
  out = {}
  for keys in adapter.magnitudes():
    kernel = flat[keys + ("kernel",)]
    if isinstance(kernel, jax.ShapeDtypeStruct):
      raise LorawFormatError(f"{what} a DoRA adapter in ComfyUI's naming needs the base's "
                             "weights, not its shapes")
    out[keys] = kernel
  return out


def write_comfyui(record: AdapterRecord, path: str, *, prefix: str = "", base_params: Any = None,
                  renames: torch_convert.Renames = ()) -> None:
  """Write `record` in ComfyUI's LoRA naming as safetensors (`.alpha` carries each scale;
  a DoRA magnitude goes into `.dora_scale`, which needs `base_params`, see the module docstring)."""
  adapter = record.adapter
  kernels = _dora_kernels(adapter, base_params, "writing")
  magnitudes = adapter.magnitudes()
  names = torch_module_paths(abstract_kernels(adapter), renames)
  tensors = {}
  for keys, (a, b, scale) in adapter.modules().items():
    stem = _comfy_stem(prefix, names[keys])
    tensors[f"{stem}.lora_down.weight"] = torch_convert.numpy_to_tensor(
        np.asarray(a, np.float32).T)
    tensors[f"{stem}.lora_up.weight"] = torch_convert.numpy_to_tensor(np.asarray(b, np.float32).T)
    # ComfyUI scales by alpha / rank, the rank read from lora_down.
    tensors[f"{stem}.alpha"] = torch.tensor(float(scale) * a.shape[1], dtype=torch.float32)
    if keys in magnitudes:
      w_norm, v_norm = _norms(kernels[keys], a, b, scale)
      m = np.asarray(magnitudes[keys], np.float64)
      tensors[f"{stem}.dora_scale"] = torch_convert.numpy_to_tensor(
          (m * (w_norm + _EPS) / v_norm).astype(np.float32)[:, None])
  with atomic.atomic_path(path) as tmp:
    safetensors.torch.save_file(tensors, tmp)


def read_comfyui(path: str, base_params: Any, *, prefix: str = "", model_family: str = "music_lm",
                 base_fingerprint: str = "", renames: torch_convert.Renames = ()
                 ) -> AdapterRecord:
  """A ComfyUI-named LoRA safetensors file (`write_comfyui`'s keys) as an adapter for
  `base_params`; `.dora_scale` [out, 1] becomes the DoRA magnitude (module docstring)."""
  source = os.path.basename(path)
  if not os.path.isfile(path):
    raise LorawFormatError(f"no such ComfyUI LoRA file: {path}")
  try:
    state = safetensors.torch.load_file(path)
  except Exception as e:  # the Rust reader raises SafetensorError for any malformed file
    raise LorawFormatError(f"cannot read {source} as safetensors: {e}") from e
  stems = {_comfy_stem(prefix, name): keys
           for keys, name in torch_module_paths(base_params, renames).items()}
  leaves = ("lora_down.weight", "lora_up.weight", "alpha", "dora_scale")
  grouped: dict[str, dict[str, torch.Tensor]] = {}
  for key, value in state.items():
    stem, leaf = next(((key[:-len(l) - 1], l) for l in leaves if key.endswith("." + l)),
                      (None, None))
    if stem is None:
      raise LorawFormatError(f"{source}: unexpected key {key} (expected <stem>."
                             f"{{{', '.join(leaves)}}})")
    if stem not in stems:
      raise LorawFormatError(f"{source}: {stem} is no dense layer of this base (wrong base or "
                             f"prefix? prefix is {prefix!r})")
    grouped.setdefault(stem, {})[leaf] = value
  if not grouped:
    raise LorawFormatError(f"{source} holds no LoRA tensors")
  params, scales, dora = {}, {}, {}
  for stem, t in sorted(grouped.items()):
    if "lora_down.weight" not in t or "lora_up.weight" not in t:
      raise LorawFormatError(f"{source}: {stem} lacks lora_down or lora_up")
    keys = stems[stem]
    a = torch_convert.tensor_to_numpy(t["lora_down.weight"].float()).T
    b = torch_convert.tensor_to_numpy(t["lora_up.weight"].float()).T
    alpha = float(t["alpha"].float().item()) if "alpha" in t else float(a.shape[1])
    params[keys] = {"lora_A": jnp.asarray(a), "lora_B": jnp.asarray(b)}
    scales[keys] = jnp.float32(alpha / a.shape[1])
    if "dora_scale" in t:
      d = torch_convert.tensor_to_numpy(t["dora_scale"].float())
      if d.shape != (b.shape[1], 1):
        raise LorawFormatError(
            f"{source}: {stem}.dora_scale is {tuple(d.shape)}; only the output-axis form "
            f"({b.shape[1]}, 1) is PEFT's DoRA (a (1, in) scale normalises per input column)")
      dora[keys] = d.reshape(-1)
  if dora and len(dora) != len(params):
    raise LorawFormatError(f"{source}: {len(dora)} of {len(params)} modules have a dora_scale")
  adapter = Adapter(tree_paths.unflatten(params), tree_paths.unflatten(scales))
  kernels = _dora_kernels(Adapter(tree_paths.unflatten(
      {k: {MAGNITUDE: v} for k, v in dora.items()}), {}), base_params, "reading")
  for keys, d in dora.items():
    w_norm, v_norm = _norms(kernels[keys], params[keys]["lora_A"], params[keys]["lora_B"],
                            scales[keys])
    params[keys][MAGNITUDE] = jnp.asarray((d * v_norm / (w_norm + _EPS)).astype(np.float32))
  adapter = Adapter(tree_paths.unflatten(params), tree_paths.unflatten(scales))
  rules = {"^" + re.escape(tree_paths.dotted(k)) + "$": k for k in params}
  rank_of = lambda k: params[k]["lora_A"].shape[1]
  first = next(iter(params))
  spec = LoraSpec(rank=rank_of(first), alpha=float(scales[first]) * rank_of(first),
                  include=tuple(rules), use_dora=bool(dora),
                  rank_pattern={p: rank_of(k) for p, k in rules.items()},
                  alpha_pattern={p: float(scales[k]) * rank_of(k) for p, k in rules.items()})
  record = AdapterRecord(adapter, spec, base_fingerprint, model_family,
                         os.path.splitext(source)[0], {"imported_from": "comfyui"})
  try:
    check_adapter(base_params, record)
  except IncompatibleAdapterError as e:
    raise LorawFormatError(f"{source}: {e}") from None
  return record
