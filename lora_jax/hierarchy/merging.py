"""Base + parent (+ child) as one model: compatibility checks, blends, the merged file, its config.

The seed's blend modes are weight formulas over an exact float32 sum of deltas against the
untouched base (`lora.merge`): additive W + a*dP + b*dC, interpolative W + (a*dP + b*dC)/(a + b).
The result is a model file like the base (`base_file`): Flax safetensors with the model size in
its metadata and `vocab.json` beside it, optionally also a PyTorch export (`.pt` or
`.safetensors`, torch names). `create_config` writes `<output stem>.json`: what inference needs and
where the weights came from.

Checks (also the whole of `--test-compatibility`): every adapter is a music_lm adapter trained on
this base (fingerprint), its modules exist with the right shapes; the parent is not a child; a child
comes with the parent it was trained over (the fingerprint its `.lora` records).
"""

import dataclasses
import json
import os
from typing import Sequence

from lora_jax import atomic, errors, finite, lora
from lora_jax.hierarchy import base_file

CONFIG_FORMAT = "lora_jax.hierarchy.inference/1"


@dataclasses.dataclass(frozen=True)
class Loaded:
  """One adapter of a stack: its role, file and record."""

  role: str  # 'parent', 'child' or 'adapter'
  path: str
  record: lora.AdapterRecord

  @property
  def fingerprint(self) -> str:
    return lora.fingerprint(self.record.adapter.params)


def load(role: str, path: str, base: base_file.BaseModel) -> Loaded:
  """Read one `.lora` against the base's tree."""
  return Loaded(role, os.path.abspath(path), lora.load_adapter(path, base.params))


def check(base: base_file.BaseModel, adapters: Sequence[Loaded]) -> list[str]:
  """Run every check; raise on the first failure, else return one report line per check."""
  lines = [f"base {base.path}: fingerprint {base.fingerprint}, d_model {base.settings.d_model}, "
           f"{base.settings.n_layers} layers, vocabulary {base.settings.vocab_size}"]
  base_file.load_tokenizer(base.path, base.settings)
  lines.append("vocab.json beside the base: ok")
  by_role = {a.role: a for a in adapters}
  for a in adapters:
    label = f"{a.role} {a.record.name or os.path.basename(a.path)}"
    if a.record.base_fingerprint != base.fingerprint:
      raise lora.IncompatibleAdapterError(
          f"{label} ({a.path}) was trained on base {a.record.base_fingerprint or '(unrecorded)'}, "
          f"but {base.path} is base {base.fingerprint} (wrong base?)")
    lora.check_adapter(base.params, a.record, model_family=base_file.FAMILY)
    level = a.record.extra.get("level")
    if a.role == "parent" and level == "child":
      raise lora.IncompatibleAdapterError(f"{a.path} is a child adapter ({a.record.name}); pass "
                                          f"it as the child and its parent as the parent")
    if a.role == "child":
      link = a.record.extra.get("parent")
      if level != "child" or not isinstance(link, dict):
        raise lora.IncompatibleAdapterError(f"{a.path} records no parent: it is not a child "
                                            f"adapter (level {level!r})")
      parent = by_role.get("parent")
      if parent is None:
        raise lora.IncompatibleAdapterError(
            f"child {a.record.name} was trained over parent {link['name']} ({link['path']}); "
            f"pass that parent too")
      if parent.fingerprint != link["fingerprint"]:
        raise lora.IncompatibleAdapterError(
            f"child {a.record.name} was trained over parent {link['name']} with fingerprint "
            f"{link['fingerprint']}, but {parent.path} has fingerprint {parent.fingerprint}")
      label += f" over parent {link['name']} (fingerprint {link['fingerprint']})"
    spec = a.record.spec
    lines.append(f"{label}: {len(a.record.adapter.modules())} modules, rank {spec.rank}, alpha "
                 f"{spec.alpha}, trained on this base: ok")
  if len(adapters) > 1:
    lines += [f"note: {n}" for n in lora.check_stack([a.record for a in adapters])]
    lines.append("adapters stack: ok")
  return lines


def load_stack(base_path: str, parent_path: str | None, child_path: str | None
               ) -> tuple[base_file.BaseModel, list[Loaded]]:
  """The base and the given adapters (parent first), not yet checked."""
  base = base_file.load_model(base_path)
  adapters = []
  if parent_path:
    adapters.append(load("parent", parent_path, base))
  if child_path:
    adapters.append(load("child", child_path, base))
  if not adapters:
    raise ValueError("no adapter given: pass a parent adapter (and optionally a child)")
  return base, adapters


@dataclasses.dataclass(frozen=True)
class Merged:
  """What a merge wrote."""

  path: str
  fingerprint: str
  weights: tuple[float, ...]  # effective, after the blend mode
  config_path: str  # '' without create_config
  torch_path: str  # '' without a PyTorch export
  report: tuple[str, ...]


def merge(base_path: str, parent_path: str | None, child_path: str | None, *, blend_mode: str,
          parent_weight: float, child_weight: float, output: str, create_config: bool,
          torch_output: str = "") -> Merged:
  """Fold the adapters into the base and write the merged model (see the module docstring).

  Everything is checked before anything is written: the weights are finite, every adapter tensor
  and the base are finite, and so is the merged result; the outputs (model, vocab.json, PyTorch
  export, config) are then written together, all or none (`atomic.atomic_paths`).
  """
  if not output.endswith(".safetensors"):
    raise ValueError(f"--output {output} must end in .safetensors (the Flax model); a PyTorch "
                     f"file is written by --torch-output")
  if torch_output:
    # Imported here: torch takes seconds to import, and only a PyTorch export needs it.
    from lora_jax.interop import torch_convert  # pylint: disable=g-import-not-at-top
  if torch_output and os.path.splitext(torch_output)[1] not in torch_convert.SUFFIXES:
    raise ValueError(f"--torch-output {torch_output} must end in "
                     f"{', '.join(torch_convert.SUFFIXES)}")
  errors.check_finite(parent_weight, "--parent-weight")
  errors.check_finite(child_weight, "--child-weight")
  base, adapters = load_stack(base_path, parent_path, child_path)
  report = check(base, adapters)
  finite.check_tree(base.params, base.path)
  for a in adapters:
    finite.check_tree(a.record.adapter.params, a.path)
  given = [parent_weight if a.role == "parent" else child_weight for a in adapters]
  weights = lora.blend_weights(blend_mode, given)
  merged = lora.merge(base.params, [a.record.adapter for a in adapters], weights)
  merged = base_file.host(merged)
  finite.check_tree(merged, f"the merged model (weights {given})")  # overflow is possible
  provenance = {
      "base": {"path": base.path, "fingerprint": base.fingerprint},
      "blend_mode": blend_mode,
      "adapters": [{"role": a.role, "name": a.record.name, "path": a.path,
                    "fingerprint": a.fingerprint, "weight": w, "effective_weight": float(e)}
                   for a, w, e in zip(adapters, given, weights)]}
  fingerprint = lora.fingerprint(merged)
  folder = os.path.dirname(os.path.abspath(output))
  vocab = os.path.join(folder, base_file.VOCAB)
  vocab_source = os.path.join(os.path.dirname(os.path.abspath(base.path)), base_file.VOCAB)
  torch_path = os.path.abspath(torch_output) if torch_output else ""
  config_path = os.path.splitext(os.path.abspath(output))[0] + ".json" if create_config else ""
  outputs = {"model": output}
  if os.path.abspath(vocab_source) != os.path.abspath(vocab):
    outputs["vocab"] = vocab
  if torch_path:
    outputs["torch"] = torch_path
  if config_path:
    outputs["config"] = config_path
  with atomic.atomic_paths(*outputs.values()) as tmps:
    tmp = dict(zip(outputs, tmps))
    base_file.save_model(tmp["model"], merged, base.settings, {"merged_from": provenance})
    if "vocab" in tmp:
      with open(vocab_source) as f:
        atomic.write_text(tmp["vocab"], f.read())
    if "torch" in tmp:
      torch_convert.save_torch_file(merged, tmp["torch"])
    if "config" in tmp:
      atomic.write_text(tmp["config"], json.dumps({
          "format": CONFIG_FORMAT,
          "model": os.path.basename(output),  # paths relative to this file's folder
          "vocab": os.path.basename(vocab),
          "model_family": base_file.FAMILY,
          "model_settings": dataclasses.asdict(base.settings),
          "fingerprint": fingerprint,
          "torch_export": torch_path,
          "merged_from": provenance,
          "generate": f"python launch/generate.py --model={os.path.abspath(output)}",
      }, indent=1, sort_keys=True) + "\n")
  return Merged(os.path.abspath(output), fingerprint, tuple(float(w) for w in weights),
                config_path, torch_path, tuple(report))


# The inference config's fields and their JSON types; `format` and `model` are required.
CONFIG_FIELDS = {"format": str, "model": str, "vocab": str, "model_family": str,
                 "model_settings": dict, "fingerprint": str, "torch_export": str,
                 "merged_from": dict, "generate": str}


def read_inference_config(path: str) -> str:
  """The model file an inference config (from `create_config`) names, checked as a schema: a
  missing, mistyped or unknown field is one error naming it."""
  try:
    with open(path) as f:
      config = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise errors.UserError(f"cannot read inference config {path}: {e}") from e
  if not isinstance(config, dict):
    raise errors.UserError(f"inference config {path} holds a JSON {type(config).__name__}, not "
                           f"an object")
  if config.get("format") != CONFIG_FORMAT:
    raise errors.UserError(f"{path} is not a {CONFIG_FORMAT} inference config (format "
                           f"{config.get('format')!r})")
  unknown = sorted(set(config) - set(CONFIG_FIELDS))
  if unknown:
    raise errors.UserError(f"inference config {path}: unknown fields {unknown}; known: "
                           f"{', '.join(CONFIG_FIELDS)}")
  if "model" not in config:
    raise errors.UserError(f"inference config {path} has no field 'model' (the model file)")
  for key, value in config.items():
    if not isinstance(value, CONFIG_FIELDS[key]):
      raise errors.UserError(f"inference config {path}: field {key!r} must be a JSON "
                             f"{'string' if CONFIG_FIELDS[key] is str else 'object'}, got "
                             f"{type(value).__name__} {value!r:.60}")
  model = config["model"]
  if not model or os.path.basename(model) != model:
    raise errors.UserError(f"inference config {path}: model {model!r} must be a file name in the "
                           f"config's folder")
  return os.path.join(os.path.dirname(os.path.abspath(path)), model)
