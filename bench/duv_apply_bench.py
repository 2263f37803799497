r"""python bench/duv_apply_bench.py --files='.cache/performances/maestro/*.mid'

Notes per second of DUV humanisation on this machine, for real MIDI files (fetch them with
`bash scripts/fetch_performances.sh`). The model is the PhraseTransformer of `--config` (the size
and input features that configs/duv/base.py trains) with random weights (speed does not depend on
the values) saved as a bundle, with and without a rank-8 LoRA on the seed's five target modules. Times are end to end (`apply_duv_to_pretty_midi`: the cached
bundle, features, batched prediction, blended copy), after one warm-up call per file that compiles
its buckets; the very first call's time (load and compilation) is printed too. MIDI parsing is
excluded.
"""

import dataclasses
import glob
import os
import tempfile
import time

import jax
import numpy as np
from absl import app, flags

from lora_jax import families, lora
from lora_jax.data.duv import features as duv_features
from lora_jax.data.duv import manifest as duv_manifest
from lora_jax.data.duv import pairs as duv_pairs
from lora_jax.duv import apply, bundle
from lora_jax.models.phrase_transformer import PhraseTransformerConfig
from lora_jax.train import config as config_lib

_CONFIG = flags.DEFINE_string("config", "configs/duv/base.py", "DUV config whose model is timed")
_FILES = flags.DEFINE_string("files", ".cache/performances/maestro/*.mid", "MIDI files (glob)")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed calls per file after the warm-up")
_PNG = flags.DEFINE_string("png", "", "also draw 8 s of the first file before/after (adapter) here")
_TARGETS = ("attn.q_proj", "attn.v_proj", "attn.out_proj", "ff.in", "ff.out")


def _model_config() -> tuple[PhraseTransformerConfig, tuple[str, ...]]:
  """The model (dropout off, as humanize runs it) and input features `--config` trains."""
  config = config_lib.load_config_dict(_CONFIG.value).to_dict()
  model = config_lib.from_mapping(families.lookup(config["family"]).config_cls, config["model"],
                                  "config.model")
  return dataclasses.replace(model.model_config(), dropout=0.0), tuple(config["duv"]["features"])


def _scaler(pms, names) -> duv_manifest.Scaler:
  mats = []
  for pm in pms:
    for inst in pm.instruments:
      f = duv_features.instrument_features(pm, inst, names)
      mats.append(np.concatenate([f[k].reshape(len(f["pitch"]), -1) for k in names], axis=1))
  x = np.concatenate(mats)
  return duv_manifest.Scaler(names, x.mean(0), x.std(0))


def _bundle(folder: str, pms) -> None:
  config, features = _model_config()
  print(f"model {config}; features {features}")
  params = jax.device_get(bundle.PhraseTransformer(config).init(
      jax.random.key(0), np.zeros((1, 8, config.n_features), np.float32),
      np.ones((1, 8), bool), np.ones((1, 8), np.float32))["params"])
  bundle.save_bundle(folder, params, config, _scaler(pms, features))
  spec = lora.LoraSpec(rank=8, alpha=16.0, target_modules=_TARGETS)
  targets = lora.resolve(spec, params)
  adapter = lora.init_adapter(targets, spec, jax.random.key(1))
  adapter = adapter.replace(params=jax.tree.map(lambda a: a + 0.01, adapter.params))
  lora.save_adapter(os.path.join(folder, "piano.lora"), lora.AdapterRecord(
      adapter, spec, lora.fingerprint(params), bundle.MODEL_FAMILY, "bench"))


def main(argv):
  del argv
  paths = sorted(glob.glob(_FILES.value))
  if not paths:
    raise FileNotFoundError(f"no files match {_FILES.value}; fetch them with "
                            "bash scripts/fetch_performances.sh")
  pms = [duv_pairs.load_midi(p) for p in paths]
  notes = [sum(len(i.notes) for i in pm.instruments if not i.is_drum) for pm in pms]
  print(f"{len(paths)} files, {sum(notes):,} notes; devices {jax.devices()}; "
        f"{os.cpu_count()} CPUs")
  with tempfile.TemporaryDirectory() as folder:
    _bundle(folder, pms)
    for label, model_path in (("base", folder), ("base+lora", os.path.join(folder, "piano.lora"))):
      t0 = time.perf_counter()
      apply.apply_duv_to_pretty_midi(pms[0], model_path, intensity=0.9)
      first = time.perf_counter() - t0
      total_time, total_notes = 0.0, 0
      for pm, n in zip(pms, notes):
        apply.apply_duv_to_pretty_midi(pm, model_path, intensity=0.9)  # compiles new buckets
        t0 = time.perf_counter()
        for _ in range(_REPEATS.value):
          apply.apply_duv_to_pretty_midi(pm, model_path, intensity=0.9)
        total_time += time.perf_counter() - t0
        total_notes += n * _REPEATS.value
      print(f"{label:10s} {total_notes / total_time:10,.0f} notes/s end to end "
            f"(first call with compilation: {first:.2f} s)")
    model = bundle.load_model(folder)
    t0 = time.perf_counter()
    for pm in pms:
      apply.humanize(pm, model, 0.9)
    print(f"{'preloaded':10s} {sum(notes) / (time.perf_counter() - t0):10,.0f} notes/s "
          "(humanize with a loaded model)")
    if _PNG.value:
      from lora_jax.duv import pianoroll  # matplotlib only when asked
      after = apply.apply_duv_to_pretty_midi(pms[0], os.path.join(folder, "piano.lora"), 0.9)
      pianoroll.draw(pms[0], after, _PNG.value, 10.0, 18.0,
                     title=f"{os.path.basename(paths[0])}, random-weight model (speed only)")
      print(f"wrote {_PNG.value}")


if __name__ == "__main__":
  app.run(main)
