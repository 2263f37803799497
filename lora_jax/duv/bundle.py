"""A DUV model on disk: one folder holding everything inference needs, checked as it loads.

Layout of a bundle folder:
  model.safetensors   base parameters, Flax-native (`lora_jax.interop.flax_weights`)
  model_config.json   the `PhraseTransformerConfig` fields (inference computes in float32) and
                      `bundle_version` (BUNDLE_VERSION)
  scaler.json         input feature scaler (`lora_jax.data.duv.manifest.save_scaler`)

An adapter is a `.lora` file (`lora_jax.lora.save_adapter`) of model family 'duv'. A model path is
either a bundle folder (the base alone) or a `.lora` file whose bundle is the folder it lies in,
so one base serves every instrument: `checkpoints/duv/guitar.lora`, `checkpoints/duv/bass.lora`.

Nothing is dropped or guessed: unknown or missing config fields, a scaler whose columns differ
from the model's inputs, missing or extra weights, an adapter trained on another base or whose
modules its own spec does not select in this base, are errors naming the values.
"""

import dataclasses
import functools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp

from lora_jax import atomic, errors, lora
from lora_jax.data.duv import manifest as duv_manifest
from lora_jax.interop import flax_weights
from lora_jax.models.phrase_transformer import PhraseTransformer, PhraseTransformerConfig
from lora_jax.train import config as config_lib

MODEL_FAMILY = "duv"
PARAMS_FILE = "model.safetensors"
CONFIG_FILE = "model_config.json"
# 2: durations are written * exp(dur_head). Version 1 bundles (no `bundle_version`) read the same
# head as softplus(dur_head) in beats: their weights would load and give wrong durations.
BUNDLE_VERSION = 2
SCALER_FILE = "scaler.json"
ADAPTER_SUFFIX = ".lora"


class BundleError(errors.UserError):
  """A DUV model folder or adapter that cannot be used as it is."""


@dataclasses.dataclass(frozen=True)
class DuvModel:
  """A loaded DUV model: base, optional adapter, scaler, and where they came from."""

  config: PhraseTransformerConfig
  params: Any  # base parameters, float32 device arrays
  scaler: duv_manifest.Scaler
  adapter: lora.AdapterRecord | None
  fingerprint: str  # of the base
  source: str  # the model path it was loaded from

  @property
  def module(self) -> PhraseTransformer:
    return PhraseTransformer(self.config)


def abstract_params(config: PhraseTransformerConfig) -> Any:
  """Shapes and dtypes of the model's parameters."""
  x = jnp.zeros((1, 1, config.n_features), jnp.float32)
  mask = jnp.ones((1, 1), bool)
  written = jnp.ones((1, 1), jnp.float32)
  return jax.eval_shape(
      lambda: PhraseTransformer(config).init(jax.random.key(0), x, mask, written)["params"])


def save_bundle(folder: str, params: Any, config: PhraseTransformerConfig,
                scaler: duv_manifest.Scaler, n_train_notes: int = 0) -> None:
  """Write a bundle folder (each file atomically)."""
  columns = len(duv_manifest.feature_columns(scaler.features))
  if columns != config.n_features:
    raise BundleError(f"scaler has {columns} columns ({', '.join(scaler.features)}), the model "
                      f"takes {config.n_features}")
  os.makedirs(folder, exist_ok=True)
  fields = {k: v for k, v in dataclasses.asdict(config).items() if k != "dtype"}
  fields["bundle_version"] = BUNDLE_VERSION
  atomic.write_text(os.path.join(folder, CONFIG_FILE),
                    json.dumps(fields, indent=1, sort_keys=True) + "\n")
  duv_manifest.save_scaler(os.path.join(folder, SCALER_FILE), scaler, n_train_notes)
  flax_weights.save_params(params, os.path.join(folder, PARAMS_FILE), {
      "model_family": MODEL_FAMILY, "base_fingerprint": lora.fingerprint(params)})


def read_config(path: str) -> PhraseTransformerConfig:
  """The model config JSON, every field present and none unknown."""
  try:
    with open(path) as f:
      fields = json.load(f)
  except FileNotFoundError:
    raise BundleError(f"no model config {path}") from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise BundleError(f"{path} is not JSON ({e})") from None
  if not isinstance(fields, dict):
    raise BundleError(f"{path} holds a JSON {type(fields).__name__}, not an object of fields")
  version = fields.pop("bundle_version", 1)
  if version != BUNDLE_VERSION:
    raise BundleError(f"{path} is a version {version} DUV bundle, this lora_jax reads version "
                      f"{BUNDLE_VERSION} (durations as a residual over the written ones): "
                      f"retrain it with launch/train_duv.py")
  known = [f.name for f in dataclasses.fields(PhraseTransformerConfig) if f.name != "dtype"]
  unknown = sorted(set(fields) - set(known))
  missing = [k for k in known if k not in fields]
  if unknown or missing:
    raise BundleError(f"{path}: unknown fields {unknown}, missing fields {missing}; "
                      f"PhraseTransformerConfig has {known}")
  try:  # types too: a field holding a string would fail far from here
    return config_lib.from_mapping(PhraseTransformerConfig, fields, path,
                                   dtype=PhraseTransformerConfig.dtype)
  except config_lib.ConfigError as e:
    raise BundleError(str(e)) from None


def _paths(model_path: str) -> tuple[str, str | None]:
  """(bundle folder, adapter file or None) of a model path."""
  if os.path.isdir(model_path):
    return model_path, None
  if model_path.endswith(ADAPTER_SUFFIX):
    if not os.path.isfile(model_path):
      raise BundleError(f"no adapter file {model_path}")
    return os.path.dirname(os.path.abspath(model_path)), model_path
  raise BundleError(f"model path {model_path} is neither a DUV bundle folder nor a "
                    f"{ADAPTER_SUFFIX} adapter file")


def check_fits(record: lora.AdapterRecord, params: Any, fingerprint: str, label: str) -> None:
  """Raise unless the adapter was trained on this base and adapts exactly what its spec says."""
  try:
    lora.check_adapter(params, record, base_fingerprint=fingerprint, model_family=MODEL_FAMILY)
    wanted = {t.keys for t in lora.resolve(record.spec, params)}
  except (lora.IncompatibleAdapterError, lora.LoraRuleError) as e:
    raise BundleError(f"adapter {label} does not fit the base: {e}") from None
  got = set(record.adapter.modules())
  if wanted != got:
    raise BundleError(f"adapter {label} holds {len(got)} modules but its spec selects "
                      f"{len(wanted)} in this base")


def load_model(model_path: str) -> DuvModel:
  """The base of a bundle folder, with the adapter when `model_path` is a `.lora` file."""
  folder, adapter_path = _paths(model_path)
  config = read_config(os.path.join(folder, CONFIG_FILE))
  scaler_path = os.path.join(folder, SCALER_FILE)
  if not os.path.isfile(scaler_path):
    raise BundleError(f"no scaler {scaler_path}")
  scaler = duv_manifest.load_scaler(scaler_path)
  columns = len(duv_manifest.feature_columns(scaler.features))
  if columns != config.n_features:
    raise BundleError(f"{scaler_path} has {columns} columns, the model takes {config.n_features}")
  params_path = os.path.join(folder, PARAMS_FILE)
  family = flax_weights.read_metadata(params_path).get("model_family", "")
  if family != MODEL_FAMILY:
    raise BundleError(f"{params_path} is for model family {family!r}, not {MODEL_FAMILY!r}")
  host = flax_weights.load_params(params_path, abstract_params(config))
  params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), host)
  fingerprint = lora.fingerprint(host)
  record = None
  if adapter_path is not None:
    try:
      record = lora.load_adapter(adapter_path, params)
    except lora.AdapterFileError as e:
      raise BundleError(str(e)) from None
    check_fits(record, params, fingerprint, adapter_path)
  return DuvModel(config, params, scaler, record, fingerprint, model_path)


def _stamp(model_path: str) -> tuple:
  folder, adapter_path = _paths(model_path)
  files = [os.path.join(folder, f) for f in (PARAMS_FILE, CONFIG_FILE, SCALER_FILE)]
  files += [adapter_path] if adapter_path else []
  return tuple((os.path.abspath(f), os.stat(f).st_mtime_ns, os.stat(f).st_size)
               for f in files if os.path.isfile(f))


@functools.lru_cache(maxsize=8)
def _load_stamped(model_path: str, stamp: tuple) -> DuvModel:
  del stamp  # part of the cache key only: a rewritten file loads afresh
  return load_model(model_path)


def load_model_cached(model_path: str) -> DuvModel:
  """`load_model`, reusing the last few loads while their files are unchanged (size and mtime)."""
  return _load_stamped(model_path, _stamp(model_path))
