"""How a DUV config file reads the shared body in its sibling `configs/duv/base.py`.

Config files are loaded by path (ml_collections' config_flags, `lora_jax.train.config.load`), not
imported from a package, so `import base` does not reach the file beside them.
"""

import importlib.util
import os
import types


def sibling(config_file: str, name: str) -> types.ModuleType:
  """The module of `<name>.py` in the folder of `config_file` (a config passes its `__file__`)."""
  path = os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"lora_jax_config_{name}", path)
  if spec is None or spec.loader is None or not os.path.isfile(path):
    raise FileNotFoundError(f"{config_file} reads the config file {path}, which does not exist")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
