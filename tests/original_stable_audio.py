"""Imports of the original PyTorch Stable Audio code (stable-audio-tools, k-diffusion) for tests.

Some of their modules import torchaudio or torchvision at module level for code the tests never
run; those packages are not installed (their wheels pin other torch builds). `imported` puts the
test-only stand-ins of tests/stand_ins on the path for the import only, then takes them out of
sys.path and sys.modules again, so no other test in the session can mistake them for the real
packages. k-diffusion's package `__init__` needs clean-fid and CLIP: `k_diffusion` loads its
`sampling` and `external` modules without running it.
"""

import contextlib
import importlib
import importlib.util
import pathlib
import sys
import types

_STAND_INS = str(pathlib.Path(__file__).parent / "stand_ins")
_PACKAGES = ("torchaudio", "torchvision")


@contextlib.contextmanager
def _stand_ins():
  absent = [p for p in _PACKAGES if importlib.util.find_spec(p) is None]
  if not absent:
    yield
    return
  sys.path.insert(0, _STAND_INS)
  try:
    yield
  finally:
    sys.path.remove(_STAND_INS)
    for name in list(sys.modules):
      if name.split(".")[0] in absent:
        del sys.modules[name]


def imported(module: str):
  """The named module, imported with the stand-ins available."""
  with _stand_ins():
    return importlib.import_module(module)


def k_diffusion():
  """(k_diffusion.sampling, k_diffusion.external) without the package __init__."""
  with _stand_ins():
    if "k_diffusion" not in sys.modules:
      spec = importlib.util.find_spec("k_diffusion")
      package = types.ModuleType("k_diffusion")
      package.__path__ = list(spec.submodule_search_locations)
      sys.modules["k_diffusion"] = package
    return (importlib.import_module("k_diffusion.sampling"),
            importlib.import_module("k_diffusion.external"))
