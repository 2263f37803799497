"""The hierarchy end to end on real pieces: packs, base, parent, child, merge, samples, NLL table.

Steps, each reusing what an earlier run of the same workdir left (packs and windows are cached,
training resumes, a finished run re-exports):
  1. style packs of the parent's genre (all its sub-styles) and of a second genre, from the
     music21 corpus (`style_corpus.build_style_packs`), `max_pieces` per style;
  2. the base: the shipped file, or trained here on `base.genres` (`training.train_base`);
  3. the parent adapter on the genre's whole pack, then the child on the sub-style's pack over it;
  4. the additive merge of both into one model, with its inference config and a PyTorch export;
  5. MIDI samples from base + adapters at run time, from the merged model and from the base alone
     (same seed), EOS held back for `generate.min_bars` bars;
  6. held-out NLL (bits per token) on the test pieces of the child's style, of a sibling
     sub-style and of the other genre, for base, base + parent, base + parent + child and merged.
The run fails (after printing everything) unless each level lowers the child style's NLL and the
merged row equals the unmerged one: a demo that shows no gain is a recipe to fix, not a result.
"""

import dataclasses
import os
import time
from typing import Any, Callable

from absl import logging

from lora_jax.data.style_packs import corpus as style_corpus
from lora_jax.hierarchy import base_file, evaluation, generation, merging, settings, training, \
    windows
from lora_jax.train import config as config_lib

MERGED_TOLERANCE = 1e-3  # bits per token: merged vs unmerged differ by float32 rounding only


@dataclasses.dataclass(frozen=True)
class BuildSettings:
  """Which corpus pieces become packs."""

  max_pieces: int  # per style (a genre's own pieces and each sub-style)
  workers: int


@dataclasses.dataclass(frozen=True)
class BaseSettings:
  """The base the adapters sit on."""

  path: str  # a base file to use; '' trains one in <workdir>/base_model
  config: str  # base-model config file (and variant), when training
  genres: tuple[str, ...]  # packs the base trains on, when training


@dataclasses.dataclass(frozen=True)
class GenerateSettings:
  """The demo's samples."""

  n_samples: int
  length: int
  temperature: float
  top_k: int
  top_p: float
  seed: int
  min_bars: int  # EOS is held back until this many bars (0: the model may stop at once)


@dataclasses.dataclass(frozen=True)
class DemoConfig:
  """One demo run (`configs/demo.py`)."""

  packs_root: str  # '' builds packs in <workdir>/style_packs
  build: BuildSettings
  base: BaseSettings
  adapter_config: str  # defaults file (and variant); genre and style files beside it
  parent: str
  child: str
  sibling: str  # another sub-style of the parent: the child must not hurt it much
  other_genre: str  # a genre the parent must not hurt much
  overrides: dict  # dotted adapter settings at command-line precedence, e.g. {'parent.epochs': 4}
  generate: GenerateSettings
  torch_export: bool


def load_config(tree: Any) -> DemoConfig:
  """The demo config file's tree as dataclasses."""
  plain = settings.to_plain(tree)
  plain["overrides"] = settings.flatten(plain["overrides"])
  return config_lib.from_mapping(DemoConfig, plain, "config")


@dataclasses.dataclass(frozen=True)
class DemoResult:
  """What the demo produced."""

  table: evaluation.Table
  sibling_checks: tuple[str, ...]  # per kind of token: child on a sibling, parent on another genre
  seconds: dict[str, float]  # per step
  files: dict[str, str]
  problems: tuple[str, ...]  # failed expectations; empty when the demo shows what it should


def _split_variant(spec: str) -> tuple[str, str | None]:
  path, _, variant = spec.partition(":")
  return path, variant or None


def _adapter_config(config: DemoConfig, child: str | None) -> settings.AdapterConfig:
  path, variant = _split_variant(config.adapter_config)
  return settings.resolve(config_lib.load_config_dict(path, variant), path, config.parent, child,
                          config.overrides)


def check_table(table: evaluation.Table, column: int = 0) -> list[str]:
  """What a levels table must show on the child's column: each level lower, merged == unmerged."""
  problems = []
  order = ["base", "base + parent", "base + parent + child"]
  for lower, higher in zip(order[1:], order):
    if not table.value(lower, column) < table.value(higher, column):
      problems.append(f"{lower} ({table.value(lower, column):.4f}) does not lower the NLL of "
                      f"{higher} ({table.value(higher, column):.4f}) on {table.columns[column]}")
  for i, name in enumerate(table.columns):
    gap = abs(table.value("merged", i) - table.value("base + parent + child", i))
    if gap > MERGED_TOLERANCE:
      problems.append(f"merged differs from base + parent + child by {gap:.2e} bits on {name}")
  return problems


def run(config: DemoConfig, workdir: str) -> DemoResult:
  """The whole demo in `workdir` (see the module docstring)."""
  seconds: dict[str, float] = {}

  def timed(name: str, fn: Callable[[], Any]) -> Any:
    start = time.monotonic()
    out = fn()
    seconds[name] = time.monotonic() - start
    logging.info("demo: %s took %.1f s", name, seconds[name])
    return out

  packs = config.packs_root or os.path.join(workdir, "style_packs")
  genres = [config.parent, config.other_genre]
  if not config.base.path:
    genres += [g for g in config.base.genres if g not in genres]
  timed("style packs", lambda: style_corpus.build_style_packs(
      packs, genres, config.build.max_pieces, config.build.workers))

  base_path = config.base.path
  if not base_path:
    path, variant = _split_variant(config.base.config)
    base_config = settings.load_base_config(config_lib.load_config_dict(path, variant))
    trained = timed("base", lambda: training.train_base(
        base_config, [os.path.join(packs, g) for g in config.base.genres],
        os.path.join(workdir, "base_model")))
    base_path = _finished(trained, "base")
  elif not os.path.isfile(base_path):
    raise ValueError(f"base model {base_path} does not exist; train one with launch/train_base.py "
                     f"or set config.base.path='' to train it here")

  adapters = os.path.join(workdir, "adapters")
  parent_config = _adapter_config(config, None)
  parent_pack = os.path.join(packs, config.parent)
  parent = _finished(timed("parent", lambda: training.train_parent(
      parent_config, config.parent, parent_pack, base_path, adapters)), "parent")
  child_config = _adapter_config(config, config.child)
  child = _finished(timed("child", lambda: training.train_child(
      child_config, config.parent, config.child, os.path.join(parent_pack, config.child), parent,
      base_path, adapters)), "child")

  merged_dir = os.path.join(workdir, "merged")
  merged = timed("merge", lambda: merging.merge(
      base_path, parent, child, blend_mode="additive", parent_weight=1.0, child_weight=1.0,
      output=os.path.join(merged_dir, f"{config.child}_model.safetensors"), create_config=True,
      torch_output=os.path.join(merged_dir, f"{config.child}_model.pt")
      if config.torch_export else ""))

  g = config.generate
  sample = lambda model, paths, folder: generation.generate(
      model, paths, [1.0] * len(paths), blend_mode="additive",
      output_dir=os.path.join(workdir, "samples", folder), n_samples=g.n_samples, length=g.length,
      temperature=g.temperature, top_k=g.top_k, top_p=g.top_p, seed=g.seed,
      min_bars=g.min_bars)
  # The base alone with the same seed: what the adapters change (bench/sample_pianoroll.py).
  samples = timed("generate", lambda: (sample(base_path, [parent, child], "runtime_adapters"),
                                       sample(merged.path, [], "merged"),
                                       sample(base_path, [], "base")))

  columns = [os.path.join(parent_pack, config.child), os.path.join(parent_pack, config.sibling),
             os.path.join(packs, config.other_genre)]
  table = timed("evaluate", lambda: evaluation.level_table(
      base_path, parent, child, merged.path, columns, "test", child_config.data.seq_len,
      child_config.data.cache_dir))
  sibling_checks = timed("sibling checks", lambda: [
      kind_report(base_path, [parent], [parent, child], columns[1], "base + parent",
                  "base + parent + child", child_config),
      kind_report(base_path, [], [parent], columns[2], "base", "base + parent", child_config)])
  files = {"base": base_path, "parent": parent, "child": child, "merged": merged.path,
           "inference_config": merged.config_path, "torch_export": merged.torch_path,
           "samples": os.path.dirname(samples[0][0].path),
           "merged_samples": os.path.dirname(samples[1][0].path),
           "base_samples": os.path.dirname(samples[2][0].path)}
  for batch in samples:
    for s in batch:
      if s.problem:
        logging.info("demo: %s: %s", s.path, s.problem)
  return DemoResult(table, tuple(sibling_checks), seconds, files, tuple(check_table(table)))


def kind_report(base_path: str, before: list[str], after: list[str], pack_dir: str,
                before_name: str, after_name: str, config: settings.AdapterConfig) -> str:
  """How adding adapters changes a pack's test NLL, per kind of token (the sibling check)."""
  base = base_file.load_model(base_path)
  tokenizer = base_file.load_tokenizer(base.path, base.settings)
  split = windows.split_windows([pack_dir], "test", tokenizer, config.data.seq_len,
                                config.data.cache_dir)
  arrays = windows.load_arrays(split)
  model = base.model()
  measure = lambda paths: evaluation.nll_by_kind(
      model, base.params, arrays, tokenizer,
      [merging.load("adapter", p, base).record.adapter for p in paths], [1.0] * len(paths))
  old, new = measure(before), measure(after)
  total = lambda kinds: sum(v.bits_per_token * v.n_tokens for v in kinds.values())
  n = sum(v.n_tokens for v in old.values())
  lines = [f"{split.styles[0]} test ({n} tokens): {before_name} {total(old) / n:.4f} -> "
           f"{after_name} {total(new) / n:.4f} bits per token; by kind of token:"]
  rise = total(new) - total(old)
  for kind in sorted(old, key=lambda k: -abs(new[k].bits_per_token - old[k].bits_per_token)
                     * old[k].n_tokens):
    change = (new[kind].bits_per_token - old[kind].bits_per_token) * old[kind].n_tokens
    share = f", {100 * change / rise:.0f}% of the change" if abs(rise) > 1e-9 else ""
    lines.append(f"  {kind:<9} {old[kind].n_tokens:6d} tokens  {old[kind].bits_per_token:7.3f} -> "
                 f"{new[kind].bits_per_token:7.3f}{share}")
  return "\n".join(lines)


def _finished(trained: training.Trained, level: str) -> str:
  if not trained.path:
    raise ValueError(f"{level} training {trained.status} at step {trained.steps} without a "
                     f"result; rerun the demo with the same workdir to resume")
  return trained.path

