"""The config hierarchy of the style adapters: defaults < genre < style < command line.

Python config files, each with `get_config(arg=None)`:
  configs/lora_adapter_config.py        defaults; groups `data`, `opt`, `run`, `parent`, `child`
  configs/genres/<parent>.py            a genre's overrides of any default; declares `name`
  configs/styles/<parent>/<child>.py    a sub-style's overrides of the `child` group only;
                                        declares `parent` and `name`
Genre and style files live in `genres/` and `styles/` beside the defaults file, or in a folder of
the user's own (`--config_dir`, looked in first; the first file found is used). Both are optional:
a genre or sub-style without a file trains on the defaults, and one log line says so. A misspelt
`--parent` or `--child` is still caught: the pack's manifest must name that style.
An override file holds only what it changes, nested as in the defaults (`config.parent.rank = 16`).
Every key it names must exist in the defaults: a key that does not is an error naming the file and
the key. Command-line values (`--rank`, `--config.child.learning_rate=...`) are applied last.
The merged tree becomes frozen dataclasses (`AdapterConfig`); nothing below sees a ConfigDict.

Target names. The seed spells LoRA targets as groups; they map onto the music transformer's
dense layers (dotted-path suffixes, see `lora_jax.lora.spec`) explicitly:
  attention          -> attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj
  feed_forward       -> ff.in, ff.out
  output_projection  -> head
Any other entry is taken as a module suffix itself (e.g. `attn.q_proj`); a suffix that matches no
layer of the base is an error when training starts (`lora.resolve`).
"""

import dataclasses
import os
from typing import Any, Mapping, Sequence

from absl import logging

from lora_jax import errors
from lora_jax.hierarchy import augment as augment_lib, layout
from lora_jax.train import config as config_lib

TARGET_GROUPS: dict[str, tuple[str, ...]] = {
    "attention": ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj"),
    "feed_forward": ("ff.in", "ff.out"),
    "output_projection": ("head",),
}
STYLE_GROUPS = ("child",)  # what a sub-style file may override: its own adapter only
GENRES_DIR, STYLES_DIR = "genres", "styles"


class HierarchyConfigError(errors.UserError):
  """An override file or value that does not fit the defaults."""


@dataclasses.dataclass(frozen=True)
class DataSettings:
  """How a style pack becomes training windows."""

  seq_len: int  # tokens per window, BOS included; at most the base's max_len
  cache_dir: str  # where token windows (.npz) are cached by content; '': <first pack>/.windows


@dataclasses.dataclass(frozen=True)
class OptSettings:
  """AdamW and its schedule, shared by every level."""

  decay: str  # 'cosine', 'linear' or 'constant' after warm-up
  final_lr_fraction: float
  b1: float
  b2: float
  eps: float
  clip_norm: float  # global-norm clipping; 0 turns it off


@dataclasses.dataclass(frozen=True)
class RunSettings:
  """Bookkeeping of a training run."""

  log_every: int  # steps per metrics row
  keep_last: int  # checkpoints kept besides the best
  max_nonfinite_in_a_row: int
  # Resume a checkpoint written with other settings (the loop's training.allow_changed_config):
  # a changed learning rate, batch size, ... is refused on resume unless this is set.
  allow_changed_config: bool


@dataclasses.dataclass(frozen=True)
class StageSettings:
  """How long and how fast one level trains."""

  epochs: int  # passes over the pack's training windows (steps = epochs * windows // batch)
  batch_size: int
  learning_rate: float  # peak
  warmup_fraction: float  # of the run's steps, linear from 0
  weight_decay: float
  eval_every: int  # steps; 0 evaluates at the end of each epoch only
  ckpt_every: int  # steps; 0 checkpoints at evaluations (and on signals, at the end) only
  seed: int

  def __post_init__(self):
    if self.epochs < 1 or self.batch_size < 1:
      raise HierarchyConfigError(f"epochs {self.epochs} and batch_size {self.batch_size} must be "
                                 f">= 1")
    if self.epochs > config_lib.MAX_STEPS:  # every epoch is at least one step
      raise HierarchyConfigError(f"epochs {self.epochs} must be <= {config_lib.MAX_STEPS} (the "
                                 f"step counter is int32)")
    if not 0.0 <= self.warmup_fraction < 1.0:
      raise HierarchyConfigError(f"warmup_fraction {self.warmup_fraction} is not in [0, 1)")


@dataclasses.dataclass(frozen=True)
class AdapterSettings(StageSettings):
  """One level of adapter (the `parent` or `child` group)."""

  rank: int
  alpha: float
  dropout: float  # on the adapter's input while training
  target_modules: tuple[str, ...]  # seed group names or module suffixes, see the module docstring

  def __post_init__(self):
    super().__post_init__()
    if self.rank < 1:  # before any pack or base is read (a rank above a kernel: lora.resolve)
      raise HierarchyConfigError(f"rank {self.rank} must be >= 1")


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
  """The merged defaults, genre, style and command-line values for one adapter run."""

  data: DataSettings
  opt: OptSettings
  run: RunSettings
  parent: AdapterSettings
  child: AdapterSettings
  sources: tuple[str, ...]  # the files merged, in order, for the record


@dataclasses.dataclass(frozen=True)
class ModelSettings:
  """Size of the base MusicTransformer (`lora_jax.models.transformer.TransformerConfig`)."""

  vocab_size: int  # must equal the tokenizer's vocabulary
  d_model: int
  n_heads: int
  n_layers: int
  d_ff: int
  max_len: int  # longest sequence generation can reach (prompt + new tokens)
  dropout: float  # while training the base; adapters train over a deterministic base
  positions: str = "learned"  # or "rotary" (TransformerConfig.positions); files before it: learned


@dataclasses.dataclass(frozen=True)
class BaseConfig:
  """How the base model is trained (`configs/base_model.py`)."""

  model: ModelSettings
  data: DataSettings
  opt: OptSettings
  run: RunSettings
  training: StageSettings
  augment: augment_lib.AugmentSettings  # of the train split only


def load_base_config(tree: Mapping[str, Any]) -> BaseConfig:
  """The base-model config file's tree as dataclasses."""
  return config_lib.from_mapping(BaseConfig, to_plain(tree), "config")


def expand_targets(names: Sequence[str]) -> tuple[str, ...]:
  """Seed target names as module suffixes: groups expanded, other entries kept, no repeats."""
  if isinstance(names, str):
    raise HierarchyConfigError(f"target_modules must be a list of names, got the string {names!r}")
  out: list[str] = []
  for name in names:
    for suffix in TARGET_GROUPS.get(name, (name,)):
      if suffix not in out:
        out.append(suffix)
  if not out:
    raise HierarchyConfigError("target_modules is empty: the adapter would adapt nothing")
  return tuple(out)


def to_plain(tree: Any) -> Any:
  """A ConfigDict (or mapping) as nested plain dicts; other values as they are."""
  if hasattr(tree, "to_dict"):
    tree = tree.to_dict()
  if isinstance(tree, Mapping):
    return {k: to_plain(v) for k, v in tree.items()}
  return tree


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{'a.b': leaf} of a nested mapping; tuples and lists are leaves."""
  out = {}
  for key, value in tree.items():
    path = f"{prefix}{key}"
    if isinstance(value, Mapping):
      out.update(flatten(value, path + "."))
    else:
      out[path] = value
  return out


def apply_overrides(tree: Mapping[str, Any], overrides: Mapping[str, Any], source: str,
                    groups: Sequence[str] | None = None) -> dict:
  """`tree` with dotted `overrides` set; a key `tree` lacks (or outside `groups`) is an error."""
  out = to_plain(tree)
  for dotted, value in overrides.items():
    *path, leaf = dotted.split(".")
    if groups is not None and (not path or path[0] not in groups):
      raise HierarchyConfigError(f"{source}: {dotted} may not be overridden here; only "
                                 f"{', '.join(g + '.*' for g in groups)}")
    node = out
    for i, key in enumerate(path):
      if not isinstance(node.get(key), dict):
        raise HierarchyConfigError(f"{source}: {dotted}: the defaults have no group "
                                   f"{'.'.join(path[:i + 1])}")
      node = node[key]
    if leaf not in node:
      raise HierarchyConfigError(f"{source}: {dotted}: no such key in the defaults; "
                                 f"{'.'.join(path) or 'the top level'} has "
                                 f"{', '.join(sorted(node))}")
    if isinstance(node[leaf], dict):
      raise HierarchyConfigError(f"{source}: {dotted} is a group; override its keys one by one")
    node[leaf] = value
  return out


def _load_file(path: str, expected: Mapping[str, str]) -> dict[str, Any]:
  """The dotted overrides of a genre or style file, after checking its identity fields."""
  tree = to_plain(config_lib.load_config_dict(path))
  for key, want in expected.items():
    if tree.get(key) != want:
      raise HierarchyConfigError(f"{path}: field {key!r} is {tree.get(key)!r}, expected {want!r}")
    del tree[key]
  return flatten(tree)


def _folders(defaults_path: str, config_dirs: Sequence[str]) -> list[str]:
  return [os.path.abspath(d) for d in config_dirs] + [
      os.path.dirname(os.path.abspath(defaults_path))]


def genre_path(defaults_path: str, parent: str, config_dirs: Sequence[str] = ()) -> str | None:
  """The genre file of `parent`: in a `config_dirs` folder, else beside the defaults; or None."""
  for folder in _folders(defaults_path, config_dirs):
    path = os.path.join(folder, GENRES_DIR, f"{parent}.py")
    if os.path.isfile(path):
      return path
  return None


def style_path(defaults_path: str, parent: str, child: str,
               config_dirs: Sequence[str] = ()) -> str | None:
  """The sub-style file of `parent/child`, found as `genre_path` finds a genre's; or None."""
  for folder in _folders(defaults_path, config_dirs):
    path = os.path.join(folder, STYLES_DIR, parent, f"{child}.py")
    if os.path.isfile(path):
      return path
  return None


def _check_config_dirs(config_dirs: Sequence[str]) -> None:
  for folder in config_dirs:
    if not os.path.isdir(folder):
      raise HierarchyConfigError(f"config folder {folder} does not exist (it should hold "
                                 f"{GENRES_DIR}/<genre>.py and {STYLES_DIR}/<genre>/<style>.py)")


def check_name(name: str, what: str) -> None:
  """Style names become file and folder names: plain names (`errors.check_name`), not 'run'."""
  errors.check_name(name, f"{what} name")
  if name == layout.RUN:  # a child's folder would be its parent's training workdir
    raise HierarchyConfigError(f"{what} name {name!r} is reserved for the training folder")


def resolve(defaults: Mapping[str, Any], defaults_path: str, parent: str, child: str | None,
            flags: Mapping[str, Any], config_dirs: Sequence[str] = ()) -> AdapterConfig:
  """Defaults < genre file < style file (with `child`) < command-line values, as dataclasses.

  `defaults` is the loaded defaults file (command-line overrides already in it, as config_flags
  leaves them); `flags` are the command-line values, applied again last so that they beat the
  genre and style files. Genre and style files are optional (see the module docstring).
  """
  check_name(parent, "genre")
  _check_config_dirs(config_dirs)
  tree = to_plain(defaults)
  sources = [os.path.abspath(defaults_path)]
  where = ", ".join(_folders(defaults_path, config_dirs))
  genre_file = genre_path(defaults_path, parent, config_dirs)
  if genre_file is None:
    logging.info("no %s/%s.py in %s: genre %s trains on the defaults", GENRES_DIR, parent, where,
                 parent)
  else:
    tree = apply_overrides(tree, _load_file(genre_file, {"name": parent}), genre_file)
    sources.append(genre_file)
  if child is not None:
    check_name(child, "sub-style")
    style_file = style_path(defaults_path, parent, child, config_dirs)
    if style_file is None:
      logging.info("no %s/%s/%s.py in %s: sub-style %s/%s trains on the defaults", STYLES_DIR,
                   parent, child, where, parent, child)
    else:
      style = _load_file(style_file, {"parent": parent, "name": child})
      tree = apply_overrides(tree, style, style_file, STYLE_GROUPS)
      sources.append(style_file)
  tree = apply_overrides(tree, flags, "command line")
  config = config_lib.from_mapping(AdapterConfig, tree, "config", sources=tuple(sources))
  for group in (config.parent, config.child):
    expand_targets(group.target_modules)
  return config


def shorthand_overrides(group: str, values: Mapping[str, Any],
                        config_overrides: Mapping[str, Any]) -> dict[str, Any]:
  """Seed flags (`--rank`) as dotted overrides of `group`, merged with `--config.*` ones.

  `values` maps a key of the group to a flag's value, None when the flag was not given. Giving one
  value both ways with different values is an error.
  """
  out = dict(config_overrides)
  for key, value in values.items():
    if value is None:
      continue
    dotted = f"{group}.{key}"
    if dotted in out and out[dotted] != value:
      raise HierarchyConfigError(f"{dotted} is given twice: {out[dotted]!r} by --config.{dotted} "
                                 f"and {value!r} by its shorthand flag")
    out[dotted] = value
  return out
