"""Checks that must pass before adapters touch a base: right base, right modules, right shapes."""

from typing import Any, Sequence

import jax.numpy as jnp

from lora_jax import errors, tree_paths
from lora_jax.lora.adapter_file import AdapterRecord


class IncompatibleAdapterError(errors.UserError):
  """An adapter that does not fit the base or the other adapters it is combined with."""


def check_adapter(base_params: Any, record: AdapterRecord, *, base_fingerprint: str | None = None,
                  model_family: str | None = None, allow_other_base: bool = False,
                  override_flag: str = "") -> None:
  """Raise unless every module of `record` is a float kernel of the base with matching shape.

  With `base_fingerprint`, the adapter must also have been trained on that exact base, unless
  `allow_other_base` is set. `override_flag` names how the caller's user sets it, for the error;
  where they cannot, leave it empty.
  """
  label = record.name or "adapter"
  if model_family is not None and record.model_family != model_family:
    raise IncompatibleAdapterError(
        f"{label} is for model family {record.model_family!r}, this base is {model_family!r}")
  flat = tree_paths.flatten(base_params)
  magnitudes = record.adapter.magnitudes()
  for keys, (a, b, _) in record.adapter.modules().items():
    name = tree_paths.dotted(keys)
    kernel = flat.get(keys + ("kernel",))
    if kernel is None:
      raise IncompatibleAdapterError(f"{label} adapts {name}, which this base does not have "
                                     f"(wrong base?)")
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
      raise IncompatibleAdapterError(f"{label} module {name} has factors of shapes {a.shape} and "
                                     f"{b.shape}, not [in, r] and [r, out]")
    want = (a.shape[0], b.shape[1])
    if tuple(kernel.shape) != want:
      raise IncompatibleAdapterError(
          f"{label} module {name} is {want[0]}x{want[1]} but the base kernel is "
          f"{kernel.shape[0]}x{kernel.shape[1]} (wrong base?)")
    if not jnp.issubdtype(kernel.dtype, jnp.floating):
      raise IncompatibleAdapterError(f"base kernel {name} has dtype {kernel.dtype}; LoRA needs a "
                                     f"float kernel (dequantise first)")
    if not (jnp.issubdtype(a.dtype, jnp.floating) and jnp.issubdtype(b.dtype, jnp.floating)):
      raise IncompatibleAdapterError(f"{label} module {name} has non-float factors")
    if keys in magnitudes and tuple(magnitudes[keys].shape) != (want[1],):
      raise IncompatibleAdapterError(
          f"{label} module {name} has a DoRA magnitude of shape {tuple(magnitudes[keys].shape)}, "
          f"expected ({want[1]},)")
  if base_fingerprint is not None and record.base_fingerprint != base_fingerprint:
    if not allow_other_base:
      how = f"; pass {override_flag} to use it anyway" if override_flag else " (wrong base?)"
      raise IncompatibleAdapterError(
          f"{label} was trained on base {record.base_fingerprint or '(unrecorded)'}, this is "
          f"{base_fingerprint}{how}")


def check_stack(records: Sequence[AdapterRecord]) -> list[str]:
  """Raise if adapters cannot be combined; return notes on harmless differences."""
  notes = []
  if not records:
    raise IncompatibleAdapterError("no adapters given")
  first = records[0]
  for r in records[1:]:
    if r.model_family != first.model_family:
      raise IncompatibleAdapterError(f"{r.name or 'adapter'} is for {r.model_family!r} but "
                                     f"{first.name or 'adapter'} is for {first.model_family!r}")
    if r.base_fingerprint != first.base_fingerprint:
      raise IncompatibleAdapterError(
          f"{r.name or 'adapter'} was trained on base {r.base_fingerprint}, "
          f"{first.name or 'adapter'} on base {first.base_fingerprint}")
    a_t, b_t = first.targets(), r.targets()
    for path in sorted(set(a_t) & set(b_t)):
      if a_t[path][:2] != b_t[path][:2]:
        raise IncompatibleAdapterError(
            f"module {path} is {a_t[path][:2]} in {first.name} but {b_t[path][:2]} in {r.name}")
    if set(a_t) != set(b_t):
      notes.append(f"{first.name or 'adapter'} adapts {len(a_t)} modules, {r.name or 'adapter'} "
                   f"{len(b_t)}; {len(set(a_t) & set(b_t))} are shared")
  return notes
