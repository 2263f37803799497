"""Model families the training loop knows, by the name a config's `family` field gives.

Each entry pairs the family's `config.model` dataclass with `make(model_config, compute_dtype)`,
which returns a `lora_jax.train.family.Family`. A new family adds one line here.
"""

import dataclasses
from typing import Callable

from lora_jax.families import autoencoder, dit, duv, music_lm, separator, song_lm
from lora_jax.train.family import Family


@dataclasses.dataclass(frozen=True)
class Entry:
  """How to build one family from its config group."""

  config_cls: type
  make: Callable[..., Family]


REGISTRY: dict[str, Entry] = {
    music_lm.NAME: Entry(music_lm.LmConfig, music_lm.make),
    duv.NAME: Entry(duv.DuvConfig, duv.make),
    song_lm.NAME: Entry(song_lm.SongConfig, song_lm.make),
    dit.NAME: Entry(dit.DitConfig, dit.make),
    autoencoder.NAME: Entry(autoencoder.AutoencoderTrainConfig, autoencoder.make),
    separator.NAME: Entry(separator.SeparatorConfig, separator.make),
}


def lookup(name: str) -> Entry:
  """The registered family `name`; an error listing the known ones otherwise."""
  if name not in REGISTRY:
    raise ValueError(f"unknown model family {name!r}; known: {', '.join(sorted(REGISTRY))}")
  return REGISTRY[name]
