"""Refusing NaN and infinity at the doors: weights read from a user's file, and weights about to be
written. A merged model full of NaN exits 0 and fails far away, in whatever loads it; checked
here it is one line naming the tensor (PEFT's `safe_merge` checks a merge's result the same way).
"""

from typing import Any

import numpy as np

from lora_jax import errors, tree_paths


def check_tree(tree: Any, what: str) -> None:
  """A UserError naming the first tensor of `tree` (a Flax tree or a flat {name: array} dict)
  that holds NaN or infinity, with how many of its values do; nothing if all are finite."""
  for keys, leaf in tree_paths.flatten(tree).items():
    values = np.asarray(leaf)
    if values.dtype.kind in "biuSU":  # integers, booleans, strings: always finite
      continue
    bad = ~np.isfinite(values)
    if bad.any():
      kinds = [k for k, hit in (("NaN", np.isnan(values).any()), ("inf", np.isinf(values).any()))
               if hit]
      raise errors.UserError(f"{what}: tensor {tree_paths.dotted(keys)} holds non-finite values "
                             f"({int(bad.sum())} of {values.size}, {'/'.join(kinds)})")
