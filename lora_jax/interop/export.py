"""Exports of a base with adapters: a merged PyTorch checkpoint, or one adapter in PEFT's format;
and the PyTorch-to-Flax conversion of a base. The model's size comes from the base file when it
records it (`lora_jax.interop.model_size`), else from the config."""

import os
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
from absl import logging

from lora_jax import errors, finite, lora, tree_paths
from lora_jax.families import music_lm
from lora_jax.interop import comfyui, flax_weights, loraw, model_size, peft, sharded_safetensors, \
    torch_convert
from lora_jax.models import transformer
from lora_jax.train import mesh as mesh_lib
from lora_jax.train.config import MeshConfig


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


def _base(base_path: str, config_model: Any) -> Any:
  """The weights of a base file, its size from the file or the config."""
  size = model_size.resolve(flax_weights.read_metadata(base_path), config_model,
                            os.path.basename(base_path))
  return flax_weights.load_params(base_path, transformer.abstract_params(size))


def export_merged(base_path: str, abstract_params: Any, adapter_paths: Sequence[str],
                  weights: Sequence[float], output: str, *, model_family: str,
                  blend_mode: str = "additive", allow_other_base: bool = False,
                  metadata: Mapping[str, str] | None = None, max_shard_bytes: int = 0,
                  partition_rules: Sequence[tuple[str, Any]] = ()) -> None:
  """Fold adapters into the base file's weights and write a PyTorch `.pt`/`.safetensors` file.

  As `merge_adapters` does, everything is checked before the one output is written (atomically):
  the weights are finite, so are the base's and every adapter's tensors, and so is the result.
  `metadata` goes into a `.safetensors` output (a `.pt` state dict has no place for it).

  With `max_shard_bytes`, `output` is a folder of safetensors shards and their index
  (`sharded_safetensors`), and the base is never assembled in one host array: it is read into an
  fsdp mesh over every device by `partition_rules`, each device folds its own blocks
  (`lora.sharded_merge`), and the shards are written one tensor at a time.
  """
  if len(weights) != len(adapter_paths):
    raise ValueError(f"{len(adapter_paths)} adapters but {len(weights)} weights")
  for i, w in enumerate(weights):
    errors.check_finite(w, f"--weights: weight {i} of {adapter_paths[i]}")
  if max_shard_bytes:
    _export_sharded(base_path, abstract_params, adapter_paths, weights, output,
                    model_family=model_family, blend_mode=blend_mode,
                    allow_other_base=allow_other_base, metadata=metadata,
                    max_shard_bytes=max_shard_bytes, partition_rules=partition_rules)
    return
  if os.path.splitext(output)[1] not in torch_convert.SUFFIXES:
    raise torch_convert.WeightFileError(f"--output {output} must end in "
                                        f"{', '.join(torch_convert.SUFFIXES)}")
  base = flax_weights.load_params(base_path, abstract_params)
  finite.check_tree(base, base_path)
  records = load_checked_adapters(base, adapter_paths, model_family=model_family,
                                  allow_other_base=allow_other_base)
  for path, record in zip(adapter_paths, records):
    finite.check_tree(record.adapter.params, path)
  merged = lora.merge(base, [r.adapter for r in records], lora.blend_weights(blend_mode, weights))
  if records:  # overflow is possible
    finite.check_tree(merged, f"the merged model (weights {list(weights)})")
  if os.path.splitext(output)[1] == ".safetensors":
    torch_convert.save_safetensors(merged, output, metadata=metadata)
  else:
    torch_convert.save_torch_file(merged, output)


def _export_sharded(base_path: str, abstract_params: Any, adapter_paths: Sequence[str],
                    weights: Sequence[float], output: str, *, model_family: str,
                    blend_mode: str, allow_other_base: bool, metadata: Mapping[str, str] | None,
                    max_shard_bytes: int, partition_rules: Sequence[tuple[str, Any]]) -> None:
  """`export_merged` on a mesh of every device, written as safetensors shards and an index."""
  if os.path.splitext(output)[1] in torch_convert.SUFFIXES:
    raise torch_convert.WeightFileError(f"--output {output} names a file; a sharded export "
                                        "writes a folder of shards and their index")
  if not partition_rules:
    raise ValueError("a sharded export needs the model's partition rules")
  mesh = mesh_lib.make_mesh(MeshConfig(data=1, fsdp=-1, model=1))
  shardings = mesh_lib.param_shardings(partition_rules, abstract_params, mesh)
  base = flax_weights.load_params_sharded(base_path, abstract_params, shardings)
  finite_on_device(base, base_path)
  records = load_checked_adapters(base, adapter_paths, model_family=model_family,
                                  allow_other_base=allow_other_base)
  for path, record in zip(adapter_paths, records):
    finite.check_tree(record.adapter.params, path)
  merged = lora.merge_sharded(base, [r.adapter for r in records],
                              lora.blend_weights(blend_mode, weights))
  if records:  # overflow is possible
    finite_on_device(merged, f"the merged model (weights {list(weights)})")
  written = torch_convert.save_sharded_safetensors(merged, output, max_shard_bytes,
                                                   metadata=metadata)
  logging.info("wrote %d shard files of at most %d bytes, and %s", len(written) - 1,
               max_shard_bytes, os.path.basename(written[-1]))


_all_finite = jax.jit(lambda x: jnp.all(jnp.isfinite(x)))


def finite_on_device(tree: Any, what: str) -> None:
  """`finite.check_tree` with the test run where each array lives: only a tensor that fails is
  fetched to the host (for the message)."""
  flat = tree_paths.flatten(tree)
  # One leaf per call (one program over every leaf planned temporaries for all of them), each
  # read before the next starts: several all-reduce programs in flight on XLA:CPU's fake devices
  # deadlocked in their rendezvous.
  for keys, leaf in flat.items():
    if not bool(_all_finite(leaf)):
      finite.check_tree({keys: leaf}, what)


def export_base(base_path: str, config_model: Any, adapter_paths: Sequence[str],
                weights: Sequence[float], output: str, *, model_family: str,
                blend_mode: str = "additive", allow_other_base: bool = False,
                max_shard_bytes: int = 0) -> None:
  """`export_merged` of a music transformer base whose size the file records, or the config gives.

  A `.safetensors` output records the size too, so `convert_torch` reads it back without a config.
  """
  size = model_size.resolve(flax_weights.read_metadata(base_path), config_model,
                            os.path.basename(base_path))
  export_merged(base_path, transformer.abstract_params(size), adapter_paths, weights, output,
                model_family=model_family, blend_mode=blend_mode,
                allow_other_base=allow_other_base, metadata=model_size.metadata_of(size),
                max_shard_bytes=max_shard_bytes, partition_rules=music_lm.PARTITION_RULES)


def convert_base(input_path: str, output: str, config_model: Any, *,
                 prefix: str | None = None) -> None:
  """A PyTorch music transformer file to a Flax-native base file that records its size."""
  metadata = {}
  if os.path.splitext(input_path)[1] == ".safetensors":
    metadata = flax_weights.read_metadata(input_path)
  elif os.path.isdir(input_path):  # a sharded export: every shard's header has the size
    metadata = flax_weights.read_metadata(sorted(set(sharded_safetensors.read_index(
        input_path, torch_convert.WeightFileError).values()))[0])
  size = model_size.resolve(metadata, config_model, os.path.basename(input_path))
  params = torch_convert.load_torch_params(input_path, transformer.abstract_params(size),
                                           prefix=prefix)
  flax_weights.save_params(params, output, {"source": os.path.basename(input_path),
                                            **model_size.metadata_of(size)})


def export_adapter_peft(adapter_path: str, folder: str, *, base_path: str | None = None,
                        base_model_name: str | None = None, config_model: Any = None,
                        model_family: str = "music_lm", allow_other_base: bool = False) -> None:
  """Write one `.lora` adapter as a PEFT adapter folder.

  With `base_path` the adapter is first checked against that base (its modules, shapes and
  fingerprint), and `base_model_name_or_path` defaults to the base file's name.
  """
  if base_path is None:
    record = lora.load_adapter(adapter_path)
  else:
    record = load_checked_adapters(_base(base_path, config_model), [adapter_path],
                                   model_family=model_family,
                                   allow_other_base=allow_other_base)[0]
    base_model_name = base_model_name or os.path.basename(base_path)
  peft.export_peft(record, folder, base_model_name=base_model_name)


ADAPTER_FORMATS = ("loraw", "comfyui", "lora", "merged")
# What --to=lora reads: a LoRAW checkpoint, or ComfyUI-named safetensors.
SOURCE_FORMATS = ("loraw", "comfyui")


def convert_adapter(input_path: str, output: str, to: str, *, base_path: str | None = None,
                    config_model: Any = None, prefix: str = "", alpha: float | None = None,
                    rank: int | None = None, multiplier: float = 1.0,
                    model_family: str = "music_lm", source: str = "loraw") -> str:
  """A `.lora` to a LoRAW checkpoint or ComfyUI safetensors, or either (`source`) to a `.lora`.

  Returns a line for the log (for LoRAW, the alpha and rank its config needs).
  """
  if to not in ADAPTER_FORMATS:
    raise ValueError(f"unknown adapter format {to!r}; choose one of {', '.join(ADAPTER_FORMATS)}")
  base = _base(base_path, config_model) if base_path else None
  if to == "merged":  # a LoRAW file folded into its base, LoRAW's forward exactly
    if base is None or alpha is None:
      raise ValueError("merging a LoRAW file needs --input_base (the base it adapts) and --alpha")
    merged = loraw.merged_params(input_path, base, alpha=alpha, rank=rank, multiplier=multiplier,
                                 prefix=prefix)
    size = model_size.resolve(flax_weights.read_metadata(base_path), config_model,
                              os.path.basename(base_path))
    flax_weights.save_params(merged, output, {"source": os.path.basename(input_path),
                                              "base": os.path.basename(base_path),
                                              **model_size.metadata_of(size)})
    return "LoRAW file merged into the base (its bias scaling included)"
  if to == "lora" and source == "comfyui":
    if base is None:
      raise ValueError("reading a ComfyUI LoRA file needs --input_base (the base it adapts)")
    record = comfyui.read_comfyui(input_path, base, prefix=prefix, model_family=model_family,
                                base_fingerprint=lora.fingerprint(base))
    lora.save_adapter(output, record)
    return f"{len(record.adapter.modules())} modules, use_dora={record.spec.use_dora}"
  if source not in SOURCE_FORMATS:
    raise ValueError(f"unknown source format {source!r}; choose one of "
                     f"{', '.join(SOURCE_FORMATS)}")
  if to == "lora":
    if base is None or alpha is None:
      raise ValueError("reading a LoRAW file needs --input_base (the base it adapts) and --alpha "
                       "(LoRAW's config alpha; --rank defaults to the file's)")
    record = loraw.read(input_path, base, alpha=alpha, rank=rank, multiplier=multiplier,
                        prefix=prefix, model_family=model_family,
                        base_fingerprint=lora.fingerprint(base))
    lora.save_adapter(output, record)
    return f"{len(record.adapter.modules())} modules, use_dora={record.spec.use_dora}"
  if base is None:
    record = lora.load_adapter(input_path)
  else:
    record = load_checked_adapters(base, [input_path], model_family=model_family)[0]
  if to == "comfyui":
    comfyui.write_comfyui(record, output, prefix=prefix, base_params=base)
    return f"{len(record.adapter.modules())} modules in ComfyUI's naming"
  alpha, rank = loraw.write(record, output, prefix=prefix, base_params=base)
  return f"LoRAW config: rank {rank}, alpha {alpha:g}, multiplier 1"
