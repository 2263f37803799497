"""Exports of a base with adapters: a merged PyTorch checkpoint, or one adapter in PEFT's format."""

from typing import Any, Sequence

from absl import logging

from lora_jax import lora
from lora_jax.interop import flax_weights, peft, torch_convert


def load_checked_adapters(base_params: Any, paths: Sequence[str], *, model_family: str,
                          allow_other_base: bool = False) -> list[lora.AdapterRecord]:
  """Read `.lora` files and run every compatibility check against `base_params`."""
  base_fp = lora.fingerprint(base_params)
  records = [lora.load_adapter(p, base_params) for p in paths]
  for record in records:
    lora.check_adapter(base_params, record, base_fingerprint=base_fp, model_family=model_family,
                       allow_other_base=allow_other_base, override_flag="--allow_other_base")
  if len(records) > 1:
    for note in lora.check_stack(records):
      logging.info("%s", note)
  return records


def export_merged(base_path: str, abstract_params: Any, adapter_paths: Sequence[str],
                  weights: Sequence[float], output: str, *, model_family: str,
                  blend_mode: str = "additive", allow_other_base: bool = False) -> None:
  """Fold adapters into the base file's weights and write a PyTorch `.pt`/`.safetensors` file."""
  if len(weights) != len(adapter_paths):
    raise ValueError(f"{len(adapter_paths)} adapters but {len(weights)} weights")
  base = flax_weights.load_params(base_path, abstract_params)
  records = load_checked_adapters(base, adapter_paths, model_family=model_family,
                                  allow_other_base=allow_other_base)
  merged = lora.merge(base, [r.adapter for r in records], lora.blend_weights(blend_mode, weights))
  torch_convert.save_torch_file(merged, output)


def export_adapter_peft(adapter_path: str, folder: str, *, base_model_name: str | None = None
                        ) -> None:
  """Write one `.lora` adapter as a PEFT adapter folder."""
  peft.export_peft(lora.load_adapter(adapter_path), folder, base_model_name=base_model_name)
