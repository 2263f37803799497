r"""python launch/train_child_adapter.py --parent=celtic_fiddle --child=reel --pack=style_packs/celtic_fiddle/reel --parent_lora=checkpoints/adapters/celtic_fiddle/celtic_fiddle.lora --base-model=assets/base_model/base_model.safetensors

Sub-style overrides for the reels of the Celtic fiddle genre. Only keys of the `child` group of
configs/lora_adapter_config.py may be set here; they beat configs/genres/celtic_fiddle.py.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Overrides of the child defaults for this sub-style."""
  del arg
  config = ml_collections.ConfigDict()
  config.parent = "celtic_fiddle"  # must match --parent and the folder name
  config.name = "reel"  # must match --child and the file name
  config.child = ml_collections.ConfigDict()
  return config
