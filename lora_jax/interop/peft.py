"""Adapters in PEFT's format: `adapter_config.json` + `adapter_model.safetensors`.

PEFT keys are `base_model.model.<module>.lora_A.weight` [r, in] and `.lora_B.weight` [out, r], the
transposes of our A [in, r] and B [r, out]; with `use_dora` also `.lora_magnitude_vector` [out]
(PEFT 0.21 writes it without `.weight`; earlier releases with it, and both are read), the same
numbers as our `lora_magnitude` (PEFT's norm over dim 1 of [out, in] is ours over dim 0 of
[in, out]).
Export spells every module out in `target_modules`, `rank_pattern` and `alpha_pattern`, so PEFT
rebuilds exactly our per-module ranks and scales. Import adapts what PEFT would: the base modules
its `target_modules` name (suffix list or full-match regex) less `exclude_modules`; targets that
match nothing are an error, as PEFT's NoMatchingPeftModuleError. It refuses features it cannot
represent (biases, fan_in_fan_out, layer selections) rather than dropping them, and checks every
factor's shape against the base before returning.
"""

import json
import os
import re
from typing import Any

import jax.numpy as jnp
import numpy as np
import safetensors.numpy

from lora_jax import atomic, finite, pickles, stable_safetensors, tree_paths
from lora_jax.interop import peft_config
from lora_jax.lora.adapter import MAGNITUDE, Adapter
from lora_jax.lora.adapter_file import AdapterRecord
from lora_jax.lora.compat import IncompatibleAdapterError, check_adapter
from lora_jax.lora.spec import LoraSpec

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."
PEFT_MAGNITUDE = "lora_magnitude_vector"


class PeftFormatError(ValueError):
  """A PEFT adapter folder this project cannot read faithfully."""


def export_peft(record: AdapterRecord, folder: str, *, base_model_name: str | None = None) -> None:
  """Write `record` as a PEFT LoRA adapter folder that `PeftModel.from_pretrained` loads."""
  tensors, ranks, alphas = {}, {}, {}
  magnitudes = record.adapter.magnitudes()
  for keys, (a, b, scale) in record.adapter.modules().items():
    name = tree_paths.dotted(keys)
    rank = a.shape[1]
    # PEFT's scale is alpha / r (or alpha / sqrt(r)); choose alpha so it equals ours exactly.
    ranks[name] = rank
    alphas[name] = float(scale) * (np.sqrt(rank) if record.spec.use_rslora else rank)
    tensors[f"{PREFIX}{name}.lora_A.weight"] = np.ascontiguousarray(np.asarray(a).T)
    tensors[f"{PREFIX}{name}.lora_B.weight"] = np.ascontiguousarray(np.asarray(b).T)
    if keys in magnitudes:
      tensors[f"{PREFIX}{name}.{PEFT_MAGNITUDE}"] = np.asarray(magnitudes[keys], np.float32)
  names = sorted(ranks)
  config = {
      "peft_type": "LORA",
      "task_type": None,
      "base_model_name_or_path": base_model_name,
      "r": ranks[names[0]],
      "lora_alpha": alphas[names[0]],
      "lora_dropout": record.spec.dropout,
      "use_rslora": record.spec.use_rslora,
      "use_dora": bool(magnitudes),
      "target_modules": names,
      "rank_pattern": {re.escape(n): r for n, r in ranks.items()},
      "alpha_pattern": {re.escape(n): a for n, a in alphas.items()},
      "bias": "none",
      "fan_in_fan_out": False,
      "init_lora_weights": True,
      "inference_mode": True,
      "modules_to_save": None,
  }
  finite.check_tree(tensors, f"adapter {record.name!r}")
  # The config and the weights appear together or not at all (a full disk, a read-only folder).
  with atomic.atomic_paths(os.path.join(folder, CONFIG_NAME),
                           os.path.join(folder, WEIGHTS_NAME)) as (config_tmp, weights_tmp):
    atomic.write_text(config_tmp, json.dumps(config, indent=2, sort_keys=True))
    stable_safetensors.save_numpy(tensors, weights_tmp, metadata={"format": "pt"})


def _peft_pattern(patterns: dict, module: str, default):
  # PEFT matches a pattern key against the end of the module name at a dot boundary.
  for key, value in patterns.items():
    if re.match(rf"(.*\.)?({key})$", module):
      return value
  return default


def _read_weights(folder: str) -> dict[str, np.ndarray]:
  path = os.path.join(folder, WEIGHTS_NAME)
  if os.path.exists(path):
    return safetensors.numpy.load_file(path)
  bin_path = os.path.join(folder, "adapter_model.bin")
  if os.path.exists(bin_path):  # the legacy format, read without unpickling arbitrary objects
    state = pickles.torch_load(bin_path, PeftFormatError)
    return {k: v.float().numpy() for k, v in state.items()}
  raise PeftFormatError(f"{folder} has neither {WEIGHTS_NAME} nor adapter_model.bin")


def _targeted(config: dict, base_modules, folder: str) -> set[str]:
  """The base modules PEFT would adapt under this config's target and exclude rules."""
  def matcher(rule):
    if isinstance(rule, str):  # one regex, matched against the whole module name
      return lambda name: re.fullmatch(rule, name) is not None
    suffixes = list(rule)
    return lambda name: any(name == s or name.endswith("." + s) for s in suffixes)

  targets = config.get("target_modules")
  if not targets:
    raise PeftFormatError(f"{folder}: adapter_config.json names no target_modules")
  if targets == "all-linear":
    raise PeftFormatError(f"{folder}: target_modules='all-linear' depends on PEFT's guess of the "
                          "output layer; list the modules instead")
  for field in ("layers_to_transform", "layers_pattern"):
    if config.get(field) not in (None, [], ""):
      raise PeftFormatError(f"{folder} sets {field}={config[field]!r}, which lora_jax does not "
                            "read; list the modules in target_modules instead")
  hit = {name for name in base_modules if matcher(targets)(name)}
  if not hit:
    raise PeftFormatError(
        f"{folder}: target modules {targets!r} match no module of this base (as PEFT's "
        f"NoMatchingPeftModuleError); modules are: {', '.join(sorted(base_modules)[:8])} ...")
  if config.get("exclude_modules"):
    hit = {name for name in hit if not matcher(config["exclude_modules"])(name)}
  return hit


def import_peft(folder: str, base_params: Any, *, model_family: str,
                base_fingerprint: str = "") -> AdapterRecord:
  """Read a PEFT LoRA adapter folder as an AdapterRecord for `base_params`."""
  config_path = os.path.join(folder, CONFIG_NAME)
  try:
    with open(config_path) as f:
      config = json.load(f)
  except FileNotFoundError:
    raise PeftFormatError(f"{config_path} does not exist") from None
  except json.JSONDecodeError as e:
    raise PeftFormatError(f"{config_path} is not valid JSON: {e}") from None
  config = peft_config.check(config, config_path)
  if config.get("peft_type") != "LORA":
    raise PeftFormatError(f"{folder} is a {config.get('peft_type')} adapter, not LORA")
  if config.get("fan_in_fan_out"):
    raise PeftFormatError(f"{folder} sets fan_in_fan_out=True, which lora_jax cannot represent")
  use_dora = bool(config.get("use_dora", False))
  if config.get("bias", "none") != "none" or config.get("modules_to_save"):
    raise PeftFormatError(f"{folder} trains biases or whole modules; only LoRA factors import")
  tensors = _read_weights(folder)
  base_modules = {tree_paths.dotted(k[:-1]): k[:-1]
                  for k in tree_paths.flatten(base_params) if k[-1] == "kernel"}
  use_rslora = bool(config.get("use_rslora", False))
  params, scales = {}, {}
  pattern = re.compile(r"^(?:base_model\.model\.)?(.+)\.(?:lora_([AB])(?:\.[^.]+)?\.weight|"
                       rf"({PEFT_MAGNITUDE})(?:\.[^.]+)?(?:\.weight)?)$")
  found: dict[str, dict[str, np.ndarray]] = {}
  for key, value in tensors.items():
    m = pattern.match(key)
    if not m:
      raise PeftFormatError(f"{folder}: unexpected tensor {key}")
    found.setdefault(m.group(1), {})[m.group(2) or "m"] = value
  for module in sorted(found):
    if module not in base_modules:
      raise PeftFormatError(f"{folder}: module {module} does not exist in this base (wrong base?)")
  targeted = _targeted(config, base_modules, folder)
  outside = sorted(set(found) - targeted)
  if outside:
    raise PeftFormatError(f"{folder}: tensors for {outside[0]} (+{len(outside) - 1} more), which "
                          f"its target_modules {config['target_modules']!r} do not name")
  missing = sorted(targeted - set(found))
  if missing:
    raise PeftFormatError(f"{folder}: target_modules name {missing[0]} (+{len(missing) - 1} more) "
                          "but the file holds no factors for it")
  want = {"A", "B", "m"} if use_dora else {"A", "B"}
  for module, pair in sorted(found.items()):
    if set(pair) != want:
      what = "lora_A, lora_B and the DoRA magnitude" if use_dora else "lora_A and lora_B"
      raise PeftFormatError(f"{folder}: module {module} has {sorted(pair)} of {what} "
                            f"(use_dora={use_dora})")
    a, b = pair["A"].T, pair["B"].T
    rank = a.shape[1]
    alpha = float(_peft_pattern(config.get("alpha_pattern") or {}, module, config["lora_alpha"]))
    keys = base_modules[module]
    params[keys] = {"lora_A": jnp.asarray(a, jnp.float32), "lora_B": jnp.asarray(b, jnp.float32)}
    if use_dora:
      params[keys][MAGNITUDE] = jnp.asarray(pair["m"], jnp.float32)
    scales[keys] = jnp.float32(alpha / (np.sqrt(rank) if use_rslora else rank))
  if not params:
    raise PeftFormatError(f"{folder} holds no LoRA tensors")
  names = sorted(found)
  exact = {"^" + re.escape(n) + "$": found[n]["A"].shape[0] for n in names}
  spec = LoraSpec(
      rank=int(config["r"]), alpha=float(config["lora_alpha"]),
      dropout=float(config.get("lora_dropout") or 0.0), include=tuple(exact),
      rank_pattern=exact, use_rslora=use_rslora, use_dora=use_dora,
      alpha_pattern={"^" + re.escape(n) + "$": float(
          _peft_pattern(config.get("alpha_pattern") or {}, n, config["lora_alpha"])) for n in names})
  adapter = Adapter(tree_paths.unflatten(params), tree_paths.unflatten(scales))
  record = AdapterRecord(adapter, spec, base_fingerprint, model_family,
                         os.path.basename(os.path.normpath(folder)), {"imported_from": "peft"})
  try:
    check_adapter(base_params, record)
  except IncompatibleAdapterError as e:
    raise PeftFormatError(f"{folder}: {e}") from None
  return record
