"""The oneDNN bfloat16 matmul kernel (`bf16_matmul.cc`): built where oneDNN is installed, optional.

It links Debian's libdnnl (`apt-get install libdnnl-dev`; scripts/setup.sh installs it on CPU
hosts) and is cached like the attention kernel, by a hash of its source, flags, compiler, jaxlib
and CPU. Without it, bfloat16 dense layers run XLA's own dot (`lora_jax.models.dense_dispatch`
says so once).
"""

import ctypes
import functools
import os
import pathlib

import jax

from lora_jax import kernels

SOURCE = pathlib.Path(__file__).with_name("bf16_matmul.cc")
LINK = ("-ldnnl",)
TARGET = "lora_jax_bf16_matmul"  # the FFI target name
_HEADER_DIRS = ("/usr/include", "/usr/local/include")


def headers_installed() -> bool:
  """Whether oneDNN's C++ header is where the compiler looks by default."""
  return any(os.path.isfile(os.path.join(d, "dnnl.hpp")) for d in _HEADER_DIRS)


def library_path() -> pathlib.Path:
  return kernels.library_path(SOURCE, LINK)


def build(force: bool = False) -> pathlib.Path:
  """Compiles the kernel (a no-op when current); KernelBuildError when oneDNN is missing."""
  if not headers_installed():
    raise kernels.KernelBuildError(
        f"oneDNN's dnnl.hpp is not in {', '.join(_HEADER_DIRS)}: apt-get install libdnnl-dev")
  return kernels.build(force, SOURCE, LINK)


@functools.cache
def load() -> bool:
  """Registers the kernel with XLA:CPU; False when it is not built or libdnnl cannot be loaded."""
  path = library_path()
  if not path.exists():
    return False
  try:
    library = ctypes.cdll.LoadLibrary(str(path))
  except OSError:  # built, then libdnnl was removed
    return False
  jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(library.LoraJaxBf16Matmul),
                              platform="cpu")
  return True
