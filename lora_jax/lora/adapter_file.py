"""The `.lora` adapter file: safetensors tensors plus everything needed to use them, never a pickle.

Tensors: `<dotted module path>.lora_A` [in, r] and `.lora_B` [r, out], e.g. `blocks.0.attn.q_proj.lora_A`,
and `.lora_magnitude` [out] when the spec says `use_dora`.
Metadata (string to string): `format` = `lora_jax.adapter`, `format_version`, `spec` (LoraSpec JSON),
`base_fingerprint`, `model_family`, `name`, and free-form `extra` JSON (a child records its parent
there). Per-module scales are recomputed from the spec and the stored shapes on load.
"""

import dataclasses
import json
from typing import Any

import jax.numpy as jnp
import numpy as np
import safetensors

from lora_jax import errors, pickles, stable_safetensors, tree_paths
from lora_jax.lora import spec as spec_lib
from lora_jax.lora.adapter import MAGNITUDE, Adapter

FORMAT = "lora_jax.adapter"
FORMAT_VERSION = 1


class AdapterFileError(errors.UserError):
  """An adapter file that is not one, is corrupt, or is from an unknown format version."""


@dataclasses.dataclass
class AdapterRecord:
  """An adapter with what it was made for."""

  adapter: Adapter
  spec: spec_lib.LoraSpec
  base_fingerprint: str
  model_family: str
  name: str = ""
  extra: dict = dataclasses.field(default_factory=dict)

  def targets(self) -> dict[str, tuple[int, int, int]]:
    """{dotted module path: (in, out, rank)}."""
    return {tree_paths.dotted(k): (a.shape[0], b.shape[1], a.shape[1])
            for k, (a, b, _) in self.adapter.modules().items()}


def save_adapter(path: str, record: AdapterRecord) -> None:
  """Write `record` to `path` atomically."""
  tensors = {}
  magnitudes = record.adapter.magnitudes()
  if bool(magnitudes) != record.spec.use_dora:
    raise AdapterFileError(f"adapter has {len(magnitudes)} DoRA magnitudes but its spec says "
                           f"use_dora={record.spec.use_dora}")
  for keys, (a, b, _) in record.adapter.modules().items():
    name = tree_paths.dotted(keys)
    tensors[name + ".lora_A"] = np.asarray(a)
    tensors[name + ".lora_B"] = np.asarray(b)
    if keys in magnitudes:
      tensors[f"{name}.{MAGNITUDE}"] = np.asarray(magnitudes[keys])
  metadata = {
      "format": FORMAT,
      "format_version": str(FORMAT_VERSION),
      "spec": record.spec.to_json(),
      "base_fingerprint": record.base_fingerprint,
      "model_family": record.model_family,
      "name": record.name,
      "extra": json.dumps(record.extra, sort_keys=True),
  }
  stable_safetensors.save_numpy(tensors, path, metadata)


def _module_keys(name: str, base_modules: dict[str, tuple[str, ...]] | None) -> tuple[str, ...]:
  if base_modules is not None:
    if name not in base_modules:
      raise AdapterFileError(f"adapter module {name} does not exist in the base model")
    return base_modules[name]
  parts = name.split(".")
  keys = []
  for p in parts:  # 'blocks.0' back to Flax's 'blocks_0'
    if p.isdigit() and keys:
      keys[-1] = f"{keys[-1]}_{p}"
    else:
      keys.append(p)
  return tuple(keys)


def load_adapter(path: str, base_params: Any = None) -> AdapterRecord:
  """Read a `.lora` file. With `base_params`, module names are resolved against that tree."""
  try:
    with safetensors.safe_open(path, framework="numpy") as f:
      metadata = f.metadata() or {}
      tensors = {k: f.get_tensor(k) for k in f.keys()}
  except FileNotFoundError:
    raise AdapterFileError(f"adapter file {path} does not exist") from None
  except Exception as e:  # safetensors raises its own error types for bad headers
    if pickles.looks_pickled(path):
      raise pickles.refusal(path, "a torch.save or pickle file, not a .lora", AdapterFileError
                            ) from None
    raise AdapterFileError(f"{path} is not a safetensors adapter ({e})") from None
  if metadata.get("format") != FORMAT:
    raise AdapterFileError(f"{path} is safetensors but not a lora_jax adapter (format "
                           f"{metadata.get('format')!r}); for a PEFT adapter use interop.peft")
  try:
    version = int(metadata.get("format_version", "0"))
  except ValueError:
    raise AdapterFileError(f"{path}: format_version {metadata['format_version']!r} is not a "
                           f"number") from None
  if version > FORMAT_VERSION:
    raise AdapterFileError(f"{path} has format version {version}; this lora_jax reads up to "
                           f"{FORMAT_VERSION}")
  if "spec" not in metadata:
    raise AdapterFileError(f"{path} records no LoRA spec")
  try:
    extra = json.loads(metadata.get("extra", "{}"))
  except json.JSONDecodeError as e:
    raise AdapterFileError(f"{path}: metadata 'extra' is not JSON ({e})") from None
  if not isinstance(extra, dict):
    raise AdapterFileError(f"{path}: metadata 'extra' must be a JSON object")
  try:  # the spec's rules are applied to the stored tensors: a bad rule is a bad file
    return _record(path, metadata, extra, tensors, base_params)
  except spec_lib.LoraRuleError as e:
    raise AdapterFileError(f"{path}: {e}") from None


def _record(path: str, metadata: dict, extra: dict, tensors: dict, base_params: Any
            ) -> AdapterRecord:
  spec = spec_lib.LoraSpec.from_json(metadata["spec"])
  base_modules = None
  if base_params is not None:
    base_modules = {tree_paths.dotted(k[:-1]): k[:-1]
                    for k in tree_paths.flatten(base_params) if k[-1] == "kernel"}
  params, scales = {}, {}
  for name in sorted({k.rsplit(".", 1)[0] for k in tensors}):
    a, b = tensors.get(name + ".lora_A"), tensors.get(name + ".lora_B")
    if a is None or b is None or a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
      raise AdapterFileError(f"{path}: module {name} lacks a matching lora_A [in, r] / "
                             f"lora_B [r, out] pair")
    rank = spec_lib.module_rank(spec, name)
    if rank != a.shape[1]:
      raise AdapterFileError(f"{path}: module {name} has rank {a.shape[1]} but its spec says {rank}")
    _, scale = spec_lib.module_scale(spec, name, a.shape[1])
    keys = _module_keys(name, base_modules)
    params[keys] = {"lora_A": jnp.asarray(a), "lora_B": jnp.asarray(b)}
    magnitude = tensors.get(f"{name}.{MAGNITUDE}")
    if spec.use_dora:
      if magnitude is None or magnitude.shape != (b.shape[1],):
        got = "none" if magnitude is None else f"shape {magnitude.shape}"
        raise AdapterFileError(f"{path}: DoRA module {name} needs a {MAGNITUDE} of shape "
                               f"({b.shape[1]},), found {got}")
      params[keys][MAGNITUDE] = jnp.asarray(magnitude)
    elif magnitude is not None:
      raise AdapterFileError(f"{path}: module {name} has a {MAGNITUDE} but the spec is not DoRA")
    scales[keys] = jnp.asarray(scale, jnp.float32)
  if not params:
    raise AdapterFileError(f"{path} holds no LoRA tensors")
  adapter = Adapter(tree_paths.unflatten(params), tree_paths.unflatten(scales))
  return AdapterRecord(adapter, spec, metadata.get("base_fingerprint", ""),
                       metadata.get("model_family", ""), metadata.get("name", ""), extra)
