r"""python launch/train_parent_adapter.py --parent=celtic_fiddle --pack=style_packs/celtic_fiddle --base-model=assets/base_model/base_model.safetensors

Genre overrides for Celtic fiddle tunes (O'Neill's 1850 and Ryan's Mammoth in the music21 corpus),
the parent of `reel`, `jig` and `hornpipe`. Any key of configs/lora_adapter_config.py may be set
here; a key the defaults do not declare is an error. Sub-styles inherit these values.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Overrides of the adapter defaults for this genre."""
  del arg
  config = ml_collections.ConfigDict()
  config.name = "celtic_fiddle"  # must match the file name and --parent
  config.parent = ml_collections.ConfigDict()
  # The base has never heard a fiddle: the genre also shifts the token distribution itself.
  config.parent.target_modules = ("attention", "feed_forward", "output_projection")
  return config
