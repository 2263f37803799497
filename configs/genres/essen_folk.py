r"""python launch/train_parent_adapter.py --parent=essen_folk --pack=style_packs/essen_folk --base-model=assets/base_model/base_model.safetensors

Genre overrides for the Essen folksongs (music21 corpus), the parent of `german` and `chinese`.
The shipped base was trained on this genre, so its adapters specialise rather than teach.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Overrides of the adapter defaults for this genre."""
  del arg
  config = ml_collections.ConfigDict()
  config.name = "essen_folk"  # must match the file name and --parent
  config.parent = ml_collections.ConfigDict()
  config.parent.rank = 8
  config.parent.alpha = 16.0
  return config
