"""Train the separator on the shared loop: render the stems, cut windows, train, write the weights.

The config (configs/separator.py) is the loop's plus a `stems` group (`StemsConfig`), taken out
before the rest becomes a `TrainConfig`. Order: every setting is checked (nothing written yet),
the stem set is rendered or completed from its cache (`stem_set.build`), its train and val pieces
are cut into `segments_per_piece` random windows each (`<workdir>/separator_{train,val}.npz`,
reused when present), the loop trains in `<workdir>/run` (resumable: run the same command again),
and the exported whole model is copied to `stems.out` atomically.
"""

import dataclasses
import os
import shutil
from typing import Any, Mapping

import numpy as np

from lora_jax import atomic
from lora_jax.audio.separator import mask_model, stem_set
from lora_jax.families import separator as family_lib
from lora_jax.train import config as config_lib
from lora_jax.train import exit_status, loop


@dataclasses.dataclass(frozen=True)
class StemsConfig:
  """The `config.stems` group."""
  dir: str  # where the rendered stems are cached
  n_pieces: int  # corpus pieces rendered (train, val and test together)
  segments_per_piece: int  # random training windows cut from each train or val piece
  out: str  # the weights file written at the end


def _windows(stems: StemsConfig, renders: list, split: str, n_samples: int, path: str,
             seed: int) -> None:
  if os.path.isfile(path):
    return
  chosen = [r for r in renders if r.split == split]
  if not chosen:
    raise ValueError(f"the stem set in {stems.dir} has no {split!r} pieces; raise "
                     f"stems.n_pieces ({stems.n_pieces})")
  arrays = stem_set.segments(stems.dir, chosen, stems.segments_per_piece, n_samples, seed)
  with atomic.atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      np.savez(f, **arrays)


def train(config_dict: Mapping[str, Any], workdir: str) -> str:
  """Render, cut, train, export; returns the weights file written."""
  mapping = config_dict.to_dict() if hasattr(config_dict, "to_dict") else dict(config_dict)
  if "stems" not in mapping:
    raise config_lib.ConfigError("a separator training config needs a stems group (see "
                                 "configs/separator.py)")
  stems = config_lib.from_mapping(StemsConfig, mapping.pop("stems"), "config.stems")
  paths = {s: os.path.join(workdir, f"separator_{s}.npz") for s in ("train", "val")}
  mapping["data"].update(path=paths["train"], val_path=paths["val"])
  config = config_lib.from_config_dict(mapping)  # every check before anything is written
  if config.family != family_lib.NAME or config.training.type != "full":
    raise config_lib.ConfigError(f"this program trains family {family_lib.NAME!r} in full; the "
                                 f"config has family {config.family!r}, training.type "
                                 f"{config.training.type!r}")
  os.makedirs(workdir, exist_ok=True)
  renders = stem_set.build(stems.dir, stems.n_pieces)
  for i, split in enumerate(("train", "val")):
    _windows(stems, renders, split, config.model.segment_samples, paths[split],
             config.training.seed + i)
  result = loop.train(config, os.path.join(workdir, "run"))
  if result.status == "stopped":
    raise exit_status.Stopped(f"training stopped at step {result.step} before it finished; run "
                              "it again with the same workdir to resume")
  if loop.is_primary():
    os.makedirs(os.path.dirname(os.path.abspath(stems.out)), exist_ok=True)
    with atomic.atomic_path(stems.out) as tmp:
      shutil.copyfile(result.export_path, tmp)
    mask_model.load(stems.out)  # what inference will check
  return stems.out
