"""Compiled CPU kernels, called from jitted code through XLA's FFI.

Two kernels: causal self-attention, forward and backward (`causal_attention.cc`), which
`lora_jax.models.attention` uses for float32 (and bfloat16, upcast) on CPU when it is built; and a bfloat16 matmul through
oneDNN (`bf16_matmul.cc`, built by `lora_jax.kernels.onednn` where Debian's libdnnl-dev is
installed), which bfloat16 dense layers use on CPUs with bfloat16 instructions. Both are built once
per machine:

    python -m lora_jax.kernels            (scripts/setup.sh runs it)

It needs a C++17 compiler (`$CXX`, else g++) and Eigen's headers (`$EIGEN_INCLUDE_DIR`, else
/usr/include/eigen3; Debian: `apt-get install libeigen3-dev`). The library is compiled with
-march=native and cached under `$LORA_JAX_KERNEL_DIR` (default ~/.cache/lora_jax/kernels), in a
file named by a hash of the source, the flags, the compiler, jaxlib's version and this CPU's
feature flags: a change to any of them builds a new file and never loads a stale one. Without a
built kernel the models fall back to the jnp attention, which is slower, and say so once.
"""

import ctypes
import functools
import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile

import jax
import jaxlib

SOURCE = pathlib.Path(__file__).with_name("causal_attention.cc")
FLAGS = ("-O3", "-march=native", "-std=c++17", "-DNDEBUG", "-DEIGEN_DONT_PARALLELIZE",
         "-Wno-attributes", "-Wno-return-type")
LIBRARY_FLAGS = ("-fPIC", "-shared")
TARGETS = {  # FFI target name -> exported handler symbol
    "lora_jax_causal_attention_fwd": "LoraJaxCausalAttentionForward",
    "lora_jax_causal_attention_bwd": "LoraJaxCausalAttentionBackward",
}
_EIGEN_DIRS = ("/usr/include/eigen3", "/usr/local/include/eigen3")


class KernelBuildError(RuntimeError):
  """The CPU kernels could not be compiled; the message says what is missing."""


def _compiler() -> str:
  cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
  if not cxx:
    raise KernelBuildError("no C++ compiler: install g++ (apt-get install g++) or set CXX")
  return cxx


def _eigen_dir() -> str:
  candidates = [os.environ["EIGEN_INCLUDE_DIR"]] if os.environ.get("EIGEN_INCLUDE_DIR") else []
  for path in candidates + list(_EIGEN_DIRS):
    if os.path.isfile(os.path.join(path, "Eigen", "Core")):
      return path
  raise KernelBuildError("Eigen headers not found in "
                         f"{', '.join(candidates + list(_EIGEN_DIRS))}: apt-get install "
                         "libeigen3-dev, or set EIGEN_INCLUDE_DIR")


def _cpu_flags() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      return next((line for line in f if line.startswith("flags")), "")
  except OSError:
    return platform.processor()


def library_path(source: pathlib.Path | None = None, link: tuple[str, ...] = ()) -> pathlib.Path:
  """Where the library for this source (default: the attention kernel), toolchain, jaxlib and CPU
  lives (built or not)."""
  source = source or SOURCE  # read at call time: tests point SOURCE at a changed copy
  key = hashlib.sha256()
  for part in (source.read_bytes(), " ".join(FLAGS + LIBRARY_FLAGS + link).encode(),
               jaxlib.__version__.encode(),
               platform.machine().encode(), _cpu_flags().encode(),
               os.environ.get("CXX", "").encode()):
    key.update(part)
    key.update(b"\0")
  root = pathlib.Path(os.environ.get("LORA_JAX_KERNEL_DIR")
                      or pathlib.Path.home() / ".cache" / "lora_jax" / "kernels")
  return root / f"{source.stem}-{key.hexdigest()[:16]}.so"


def compile_command(source: os.PathLike, output: os.PathLike, *extra: str,
                    library: bool = True) -> list[str]:
  """The compiler command for `source` against Eigen and jaxlib's FFI headers (a shared library,
  or with library=False a program, as bench/attention_kernel_bench.py builds its harness)."""
  return [_compiler(), *FLAGS, *(LIBRARY_FLAGS if library else ()), f"-I{_eigen_dir()}",
          f"-I{jax.ffi.include_dir()}", *extra, str(source), "-o", str(output)]


def build(force: bool = False, source: pathlib.Path | None = None,
          link: tuple[str, ...] = ()) -> pathlib.Path:
  """Compiles a kernel (default: the attention kernel) for this machine, a no-op when the cached
  library is current; `link` names the libraries it links against (-ldnnl)."""
  source = source or SOURCE
  target = library_path(source, link)
  if target.exists() and not force:
    return target
  _compiler(), _eigen_dir()  # a missing toolchain fails here, before any file is made
  target.parent.mkdir(parents=True, exist_ok=True)
  fd, partial = tempfile.mkstemp(suffix=".so.partial", dir=target.parent)
  os.close(fd)
  try:
    done = subprocess.run(compile_command(source, partial) + list(link), capture_output=True,
                          text=True)
    if done.returncode != 0:
      raise KernelBuildError(f"compiling {source.name} failed:\n{done.stderr[-4000:]}")
    os.replace(partial, target)  # whole or not at all: a reader never loads half a library
  finally:
    if os.path.exists(partial):
      os.unlink(partial)
  return target


@functools.cache
def load() -> bool:
  """Registers the built kernels with XLA:CPU; False (nothing registered) when not built."""
  path = library_path()
  if not path.exists():
    return False
  library = ctypes.cdll.LoadLibrary(str(path))
  for name, symbol in TARGETS.items():
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(library, symbol)),
                                platform="cpu")
  return True
