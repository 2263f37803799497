r"""python launch/train_child_adapter.py --parent=essen_folk --child=chinese --pack=style_packs/essen_folk/chinese --parent_lora=checkpoints/adapters/essen_folk/essen_folk.lora --base-model=assets/base_model/base_model.safetensors

Sub-style overrides for the chinese songs of the Essen folksongs. Only keys of the `child` group of
configs/lora_adapter_config.py may be set here; they beat configs/genres/essen_folk.py.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Overrides of the child defaults for this sub-style."""
  del arg
  config = ml_collections.ConfigDict()
  config.parent = "essen_folk"  # must match --parent and the folder name
  config.name = "chinese"  # must match --child and the file name
  config.child = ml_collections.ConfigDict()
  return config
