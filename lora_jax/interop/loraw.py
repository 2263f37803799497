"""Adapters as LoRAW checkpoints (NeuralNotW0rk/LoRAW) and in ComfyUI's LoRA naming.

LoRAW saves `residual_modules.state_dict()` with `torch.save`: for each adapted torch module path
`p` (its `.` written `/`), `<prefix><p>/lora_down.weight` [r, in] and `/lora_up.weight` [out, r],
plus `/dora_mag.weight` [out, 1] and `/dora_mag.bias` [out] with DoRA (an `nn.Linear(1, out)`
whose weight is the magnitude; its bias never enters LoRAW's forward, so it is written as zeros and
ignored on read). The file records no alpha or rank: LoRAW's forward adds
`multiplier * alpha / rank * up(down(x))`, with alpha and rank from its model config. So `read`
takes them, and `write` says which alpha goes with the rank in the file. The prefix is
`model/model/` for Stable Audio's DiT (what LoRAW's README shows); for this project's families it
is empty, their torch twins' module names. Paths map through `torch_convert.torch_names`, the
table the weight converters use. LoRAW files are read with `torch.load(weights_only=True)` only.

LoRAW's DoRA multiplies its whole output by m / ||W + s up down||, bias included; PEFT's and
lora_jax's leave the bias alone. The two agree where the adapted layer has no bias (Stable Audio's
`to_qkv`, `to_out`), so DoRA files are read and written as adapters only there, and at multiplier
1 (LoRAW's multiplier scales the delta but not the norm). Elsewhere the file's function has no
adapter form here: LoRAW's output bias g * b (g = m / ||W + s up down||) moves with the factors,
the magnitude and W, so neither a fixed bias delta nor PEFT's magnitude reproduces it once the
adapter trains on; rather than a second DoRA semantics in the forward, such a file is merged
(`merged_params`: W' = g * (W + multiplier s up down), b' = g * b, LoRAW's forward exactly, any
multiplier) into a whole model, which every tool taking a base reads. Its `load_weights` copies `lora_down` into the
magnitude (PRIOR_ART.md); this reader takes `dora_mag.weight`.

ComfyUI's naming of the same factors (and its DoRA key) is `lora_jax.interop.comfyui`.
"""

import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch

from lora_jax import atomic, tree_paths
from lora_jax.interop import torch_convert
from lora_jax.lora.adapter import MAGNITUDE, Adapter
from lora_jax.lora.adapter_file import AdapterRecord
from lora_jax.lora.compat import IncompatibleAdapterError, check_adapter
from lora_jax.lora.spec import LoraSpec

STABLE_AUDIO_PREFIX = "model/model/"
_LEAVES = ("lora_down.weight", "lora_up.weight", "dora_mag.weight", "dora_mag.bias")


class LorawFormatError(ValueError):
  """A LoRAW file this project cannot read faithfully, or an adapter it cannot write as one."""


def abstract_kernels(adapter: Adapter) -> dict:
  """A tree with the adapted modules' kernels only: enough for `torch_names`."""
  return tree_paths.unflatten({
      keys + ("kernel",): jax.ShapeDtypeStruct((a.shape[0], b.shape[1]), jnp.float32)
      for keys, (a, b, _) in adapter.modules().items()})


def torch_module_paths(abstract_params: Any, renames: torch_convert.Renames = ()
                       ) -> dict[tuple[str, ...], str]:
  """{Flax module keys: torch module path} of every 2-D kernel, through the converters' table."""
  flat = tree_paths.flatten(abstract_params)
  keys_of = {tree_paths.dotted(k): k for k in flat}
  out = {}
  for path, name in torch_convert.torch_names(abstract_params, renames).items():
    if path.endswith(".kernel") and len(flat[keys_of[path]].shape) == 2:
      out[keys_of[path][:-1]] = name[:-len(".weight")]
  return out


def _single_scale(adapter: Adapter) -> float:
  scales = {tree_paths.dotted(k): float(s) for k, (_, _, s) in adapter.modules().items()}
  if len(set(scales.values())) > 1:
    (p1, s1), (p2, s2) = sorted(scales.items(), key=lambda kv: kv[1])[::len(scales) - 1]
    raise LorawFormatError(f"LoRAW files have one alpha/rank for every module, but {p1} has "
                           f"scale {s1:g} and {p2} {s2:g}")
  return next(iter(scales.values()))


def _check_dora_base(adapter: Adapter, base_params: Any, what: str) -> None:
  if not adapter.magnitudes():
    return
  if base_params is None:
    raise LorawFormatError(f"{what} a DoRA adapter needs the base, to check that its layers have "
                           "no bias (LoRAW's DoRA also scales the bias)")
  flat = tree_paths.flatten(base_params)
  for keys in adapter.magnitudes():
    bias = flat.get(keys + ("bias",))
    if isinstance(bias, jax.ShapeDtypeStruct):
      raise LorawFormatError(f"{what} a DoRA adapter needs the base's weights, not its shapes, "
                             "to check its biases")
    if bias is not None and np.any(np.asarray(bias) != 0):
      raise LorawFormatError(
          f"{tree_paths.dotted(keys)} has a bias: LoRAW's DoRA scales it by m/||W + sAB|| as "
          "well, PEFT's and lora_jax's do not, so the file would mean another function")


def write(record: AdapterRecord, path: str, *, prefix: str = "", base_params: Any = None,
          renames: torch_convert.Renames = ()) -> tuple[float, int]:
  """Write `record` as a LoRAW checkpoint; returns the (alpha, rank) LoRAW's config needs."""
  adapter = record.adapter
  scale = _single_scale(adapter)
  _check_dora_base(adapter, base_params, "writing")
  names = torch_module_paths(abstract_kernels(adapter), renames)
  magnitudes = adapter.magnitudes()
  tensors = {}
  for keys, (a, b, _) in adapter.modules().items():
    stem = prefix + names[keys].replace(".", "/")
    tensors[f"{stem}/lora_down.weight"] = torch_convert.numpy_to_tensor(
        np.asarray(a, np.float32).T)
    tensors[f"{stem}/lora_up.weight"] = torch_convert.numpy_to_tensor(np.asarray(b, np.float32).T)
    if keys in magnitudes:
      m = np.asarray(magnitudes[keys], np.float32)
      tensors[f"{stem}/dora_mag.weight"] = torch_convert.numpy_to_tensor(m[:, None])
      tensors[f"{stem}/dora_mag.bias"] = torch.zeros(m.shape[0])
  with atomic.atomic_path(path) as tmp:
    torch.save(tensors, tmp)
  rank = next(iter(adapter.modules().values()))[0].shape[1]
  return scale * rank, rank


def _group(state: dict, prefix: str, source: str) -> dict[str, dict[str, torch.Tensor]]:
  grouped: dict[str, dict[str, torch.Tensor]] = {}
  for key, value in state.items():
    if not key.startswith(prefix):
      raise LorawFormatError(f"{source}: key {key} does not start with prefix {prefix!r}")
    stem, _, leaf = key[len(prefix):].rpartition("/")
    if leaf not in _LEAVES or not stem:
      raise LorawFormatError(f"{source}: unexpected key {key} (a LoRAW file holds "
                             f"<module>/{{{', '.join(_LEAVES)}}})")
    if not isinstance(value, torch.Tensor) or not value.dtype.is_floating_point:
      raise LorawFormatError(f"{source}: {key} is not a float tensor")
    grouped.setdefault(stem.replace("/", "."), {})[leaf] = value
  return grouped


def _modules(path: str, base_params: Any, prefix: str, renames: torch_convert.Renames
             ) -> list[tuple[str, tuple[str, ...], dict]]:
  """(module name, its Flax keys, its LoRAW tensors) for every module of a LoRAW file, in name
  order; a missing file, a foreign module or a module without both factors is an error."""
  source = os.path.basename(path)
  if not os.path.isfile(path):
    raise LorawFormatError(f"no such LoRAW file: {path}")
  state = torch_convert.load_weights_only(path)  # any suffix: LoRAW users name them .ckpt or .pt
  if isinstance(state, dict) and set(state) == {"state_dict"}:
    # What LoRAW's train.py expects of --lora-ckpt-path (its save_weights writes the bare dict).
    state = state["state_dict"]
  if not isinstance(state, dict):
    raise LorawFormatError(f"{source} holds a {type(state).__name__}, not LoRAW's dict of tensors")
  grouped = _group(state, prefix, source)
  if not grouped:
    raise LorawFormatError(f"{source} holds no LoRAW tensors")
  modules = {v: k for k, v in torch_module_paths(base_params, renames).items()}
  out = []
  for name, leaves in sorted(grouped.items()):
    if name not in modules:
      raise LorawFormatError(f"{source}: module {name} is no dense layer of this base (wrong base "
                             f"or prefix? prefix is {prefix!r})")
    if "lora_down.weight" not in leaves or "lora_up.weight" not in leaves:
      raise LorawFormatError(f"{source}: module {name} lacks lora_down or lora_up")
    out.append((name, modules[name], leaves))
  return out


def read(path: str, base_params: Any, *, alpha: float, rank: int | None = None,
         multiplier: float = 1.0, prefix: str = "", model_family: str = "music_lm",
         base_fingerprint: str = "", renames: torch_convert.Renames = ()) -> AdapterRecord:
  """A LoRAW checkpoint as an adapter for `base_params` (the tree or its abstract shapes).

  `alpha`, `rank` and `multiplier` are LoRAW's config values: scale = multiplier * alpha / rank,
  with `rank` defaulting to the file's rank of each module.
  """
  source = os.path.basename(path)
  params, scales = {}, {}
  for name, keys, leaves in _modules(path, base_params, prefix, renames):
    a = torch_convert.tensor_to_numpy(leaves["lora_down.weight"].float()).T
    b = torch_convert.tensor_to_numpy(leaves["lora_up.weight"].float()).T
    params[keys] = {"lora_A": jnp.asarray(a), "lora_B": jnp.asarray(b)}
    if "dora_mag.weight" in leaves:
      m = torch_convert.tensor_to_numpy(leaves["dora_mag.weight"].float())
      if m.shape not in ((b.shape[1], 1), (b.shape[1],)):
        raise LorawFormatError(f"{source}: {name}/dora_mag.weight is {m.shape}, expected "
                               f"({b.shape[1]}, 1)")
      params[keys][MAGNITUDE] = jnp.asarray(m.reshape(-1))
    scales[keys] = jnp.float32(multiplier * alpha / (rank or a.shape[1]))
  dora = {k for k in params if MAGNITUDE in params[k]}
  if dora and len(dora) != len(params):
    raise LorawFormatError(f"{source}: {len(dora)} of {len(params)} modules have a DoRA magnitude")
  if dora and multiplier != 1.0:
    raise LorawFormatError(f"{source} is DoRA: LoRAW's multiplier {multiplier} scales the delta "
                           "but not its norm, which lora_jax does not represent; use 1")
  adapter = Adapter(tree_paths.unflatten(params), tree_paths.unflatten(scales))
  _check_dora_base(adapter, base_params, "reading")
  # One exact rule per module: its file rank, and the alpha that gives its scale at that rank.
  rules = {"^" + re.escape(tree_paths.dotted(k)) + "$": k for k in params}
  spec = LoraSpec(rank=params[next(iter(params))]["lora_A"].shape[1], alpha=float(alpha),
                  include=tuple(rules), use_dora=bool(dora),
                  rank_pattern={p: params[k]["lora_A"].shape[1] for p, k in rules.items()},
                  alpha_pattern={p: float(scales[k]) * params[k]["lora_A"].shape[1]
                                 for p, k in rules.items()})
  record = AdapterRecord(adapter, spec, base_fingerprint, model_family,
                         os.path.splitext(source)[0], {"imported_from": "loraw"})
  try:
    check_adapter(base_params, record)
  except IncompatibleAdapterError as e:
    raise LorawFormatError(f"{source}: {e}") from None
  return record


def merged_params(path: str, base_params: Any, *, alpha: float, rank: int | None = None,
                  multiplier: float = 1.0, prefix: str = "",
                  renames: torch_convert.Renames = ()) -> Any:
  """`base_params` with a LoRAW file folded in as LoRAW's forward computes it, in float32.

  Plain modules: W + multiplier s up down. DoRA modules: g * (W + multiplier s up down) and bias
  g * b, g = m / ||W + s up down|| per output (the norm without the multiplier, as LoRAW's).
  """
  source = os.path.basename(path)
  flat = {k: np.asarray(v, np.float32) for k, v in tree_paths.flatten(base_params).items()}
  for name, keys, leaves in _modules(path, base_params, prefix, renames):
    a = torch_convert.tensor_to_numpy(leaves["lora_down.weight"].float()).T.astype(np.float64)
    b = torch_convert.tensor_to_numpy(leaves["lora_up.weight"].float()).T.astype(np.float64)
    w = flat[keys + ("kernel",)].astype(np.float64)
    if a.shape[0] != w.shape[0] or b.shape[1] != w.shape[1] or a.shape[1] != b.shape[0]:
      raise LorawFormatError(f"{source}: {name} factors {a.shape[::-1]} and {b.shape[::-1]} do "
                             f"not fit the base kernel {w.shape[::-1]}")
    s = alpha / (rank or a.shape[1])
    kernel = w + multiplier * s * (a @ b)
    if "dora_mag.weight" in leaves:
      m = torch_convert.tensor_to_numpy(leaves["dora_mag.weight"].float()).reshape(-1)
      if m.shape != (w.shape[1],):
        raise LorawFormatError(f"{source}: {name}/dora_mag.weight holds {m.size} values, the "
                               f"layer has {w.shape[1]} outputs")
      g = m / np.linalg.norm(w + s * (a @ b), axis=0)
      kernel = kernel * g
      if keys + ("bias",) in flat:
        flat[keys + ("bias",)] = (flat[keys + ("bias",)] * g).astype(np.float32)
    flat[keys + ("kernel",)] = kernel.astype(np.float32)
  return tree_paths.unflatten(flat)
