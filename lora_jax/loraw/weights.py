"""LoRAW's `save_weights`, `load_weights` and `merge_weights`, in its file format and in `.lora`.

A path ending in `.lora` is this project's adapter file (it records rank, alpha, targets and the
base's fingerprint); any other (`.ckpt`, `.pt`, `.safetensors`...) is LoRAW's torch-saved dict of
`<module path>/lora_down.weight` and `/lora_up.weight` (`lora_jax.interop.loraw`), which records
no alpha: it is read with the model config's `lora.alpha` over each module's rank in the file, at
multiplier 1 (the multiplier is the forward's weight: `lora_jax.lora.forward`).

`merge_weights` adds another checkpoint's delta to the current one without overwriting it:
factors concatenated along the rank, so the merged delta is exactly d1 + multiplier * d2 (LoRAW's
own adds the factors, which is not the sum of the deltas, and fails with a TypeError).
"""

import os
from typing import Any

from lora_jax import lora
from lora_jax.families import dit as dit_family
from lora_jax.interop import loraw as loraw_file
from lora_jax.loraw import base_weights
from lora_jax.lora.adapter_file import AdapterRecord


def is_lora_file(path: str) -> bool:
  return path.endswith(".lora")


def save_weights(record: AdapterRecord, path: str, base_params: Any = None) -> str:
  """Write `record` to `path`; returns the LoRAW config line that goes with the file. A DoRA
  adapter needs `base_params` for LoRAW's format (`lora_jax.interop.loraw` checks biases)."""
  if is_lora_file(path):
    lora.save_adapter(path, record)
    return f"{path}: .lora (rank, alpha and targets recorded in the file)"
  alpha, rank = loraw_file.write(record, path, base_params=base_params)
  return f"{path}: LoRAW config rank {rank}, alpha {alpha:g}, multiplier 1"


def load_weights(path: str, abstract_base: Any, alpha: float, base_fingerprint: str = ""
                 ) -> AdapterRecord:
  """An adapter for the dit family's base (its abstract tree) from either file format."""
  if not os.path.isfile(path):
    raise loraw_file.LorawFormatError(f"no such adapter file: {path}")
  if is_lora_file(path):
    record = lora.load_adapter(path, abstract_base)
    lora.check_adapter(abstract_base, record, model_family=dit_family.NAME)
    return record
  return loraw_file.read(path, base_weights.kernels_only(abstract_base), alpha=alpha,
                         model_family=dit_family.NAME, base_fingerprint=base_fingerprint)


def merge_weights(record: AdapterRecord, other: AdapterRecord, multiplier: float = 1.0
                  ) -> AdapterRecord:
  """`record` plus `multiplier` times `other`'s delta, as one adapter (scale 1, ranks summed)."""
  merged = lora.concat([record.adapter, other.adapter], [1.0, multiplier])
  return AdapterRecord(merged, lora.unit_scale_spec(merged), record.base_fingerprint,
                       record.model_family, record.name,
                       {**record.extra, "merged": [other.name, multiplier]})
