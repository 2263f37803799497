"""Names of parameters: one dotted, PyTorch-style path per leaf of a Flax parameter tree.

Every rule a user writes (LoRA targets, sharding rules, freezing) and every key exchanged with
PyTorch is spelled with these names, so `blocks.0.attn.q_proj` means the same module in a config,
in an error message, in a PEFT file and in a state dict. Flax's list-of-modules names (`blocks_0`)
become `blocks.0`; the leaf keeps its Flax name (`kernel`, `bias`, `scale`, `embedding`).
"""

import re
from typing import Any, Iterable

import jax

_INDEXED = re.compile(r"^(.+)_(\d+)$")


def key_name(key) -> str:
  """The string of one key in a jax key path."""
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def component(name: str) -> str:
  """Flax module name to its PyTorch spelling: `blocks_3` -> `blocks.3`."""
  m = _INDEXED.match(name)
  return f"{m.group(1)}.{m.group(2)}" if m else name


def dotted(keys: Iterable[str]) -> str:
  """Flax key tuple to a dotted path: ('blocks_0', 'attn', 'q_proj') -> 'blocks.0.attn.q_proj'."""
  return ".".join(component(k) for k in keys)


def flatten(tree: Any, is_leaf=None) -> dict[tuple[str, ...], Any]:
  """Nested dict tree to {key tuple: leaf}, in the tree's own (sorted) order; `is_leaf` as in
  jax.tree (a quantised kernel, say, kept whole)."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
  return {tuple(key_name(k) for k in path): leaf for path, leaf in leaves}


def unflatten(flat: dict[tuple[str, ...], Any]) -> dict:
  """{key tuple: leaf} back to a nested dict."""
  out: dict = {}
  for keys, leaf in flat.items():
    node = out
    for k in keys[:-1]:
      node = node.setdefault(k, {})
    node[keys[-1]] = leaf
  return out


def leaf_paths(tree: Any) -> dict[str, tuple[str, ...]]:
  """{dotted path of each leaf: its key tuple}, e.g. 'blocks.0.attn.q_proj.kernel'."""
  return {dotted(keys): keys for keys in flatten(tree)}
