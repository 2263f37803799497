"""DUV training through the shared loop, end to end on tiny files: a base bundle, then a piano
adapter beside it that humanize loads and that changes the output, both scored on a held-out song
by the evaluation; the guitar, bass and drums configs through the real launch programs (no real
performances of those ship offline); the split they train on, and the errors of a run that cannot
be prepared."""

import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pretty_midi
import pytest

from lora_jax import families
from lora_jax.data.duv import build as duv_build
from lora_jax.data.duv import manifest as duv_manifest
from lora_jax.duv import apply, bundle, config_files, evaluate, splits, training
from lora_jax.families import duv as duv_family
from lora_jax.train import checkpoint
from lora_jax.train import config as config_lib

_ROOT = pathlib.Path(__file__).parents[1]


@pytest.fixture(autouse=True)
def registered(monkeypatch):
  """The duv family in the registry (until lora_jax/families/__init__.py lists it)."""
  if duv_family.NAME not in families.REGISTRY:
    monkeypatch.setitem(families.REGISTRY, duv_family.NAME,
                        families.Entry(duv_family.DuvConfig, duv_family.make))


BAND = ((0, False), (25, False), (33, False), (0, True))  # piano, guitar, bass, drums


def _performance(path, n, seed, parts=((0, False),)):
  """A 120 bpm piece of n notes per (program, is_drum) part; the 'human' plays downbeats louder
  and notes a little shorter."""
  rng = np.random.default_rng(seed)
  pm = pretty_midi.PrettyMIDI(initial_tempo=120.0)
  for program, is_drum in parts:
    name = "Drums" if is_drum else pretty_midi.program_to_instrument_class(program)
    inst = pretty_midi.Instrument(program, is_drum=is_drum, name=name)
    for i in range(n):
      start = i * 0.25
      velocity = 100 if i % 8 == 0 else int(rng.integers(45, 70))
      inst.notes.append(pretty_midi.Note(velocity, 48 + (i * 5) % 24, start, start + 0.2))
    pm.instruments.append(inst)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  pm.write(str(path))


def _build(root, parts) -> str:
  """The enriched manifest of six 72-note pieces of `parts`, built as the real data is."""
  for i in range(6):
    _performance(root / "cache" / "pop909" / f"song{i}.mid", 72, i, parts)
  config = duv_build.BuildConfig(cache_dir=str(root / "cache"), out_dir=str(root / "build"),
                                 sources=("pop909",), max_len=16, stride=8)
  duv_build.build_duv_dataset(config)
  return str(root / "build" / "duv_manifest_enriched.jsonl")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
  return _build(tmp_path_factory.mktemp("duv_data"), ((0, False),))


@pytest.fixture(scope="module")
def band_manifest(tmp_path_factory):
  return _build(tmp_path_factory.mktemp("duv_band"), BAND)


def _config(name: str, manifest: str, folder: str, **overrides):
  path = str(_ROOT / "configs" / "duv" / name)
  overrides = {"duv.manifest": manifest, "duv.bundle": folder, "model.n_layers": 1,
               "duv.heldout": "song5$", **overrides}
  return config_lib.load_config_dict(path, "tiny", overrides)


def test_base_then_adapter_then_humanize(manifest, tmp_path):
  folder = str(tmp_path / "models")
  one = jax.devices()[:1]  # eight fake devices on a two-core machine only add overhead here
  written = training.train(_config("base.py", manifest, folder), str(tmp_path / "base"), "full",
                           one)
  assert written == folder
  base = bundle.load_model(folder)
  assert base.adapter is None and base.config.d_model == 32
  # ckpt.export "best": the bundle holds the checkpoint with the lowest validation loss.
  ckpts = checkpoint.Checkpoints(str(tmp_path / "base" / "run" / "checkpoints"),
                                 config_lib.CkptConfig(100, 2, 1))
  best = ckpts.best_step()
  ckpts.close()
  with open(tmp_path / "base" / "run" / "metrics.csv") as f:
    rows = [line.split(",") for line in f.read().splitlines()]
  val = {int(r[0]): float(r[3]) for r in rows[2:] if r[3]}  # row 1 is the untrained model
  assert best == min(val, key=val.get)
  record = splits.read_record(str(tmp_path / "base" / splits.RECORD_FILE))
  assert record.heldout_pieces == ("pop909/song5",) and len(record.train_pieces) == 5
  assert record.model == folder and record.training_type == "full" and record.step == best

  adapter_path = training.train(_config("piano.py", manifest, folder),
                                str(tmp_path / "piano"), "lora", one)
  assert adapter_path == os.path.join(folder, "piano.lora")
  adapted = bundle.load_model(adapter_path)
  assert adapted.fingerprint == base.fingerprint
  assert len(adapted.adapter.adapter.modules()) == 5  # 1 layer x the seed's 5 targets
  piano_record = splits.read_record(str(tmp_path / "piano" / splits.RECORD_FILE))
  assert adapted.adapter.extra["export_step"] == piano_record.step  # the loop's best, as written

  pm = pretty_midi.PrettyMIDI(str(pathlib.Path(manifest).parents[1] / "cache" / "pop909" /
                                  "song0.mid"))
  plain, _ = apply.humanize(pm, base, 1.0)
  with_lora, _ = apply.humanize(pm, adapted, 1.0)
  ends = lambda p: [n.end for n in p.instruments[0].notes]
  vels = lambda p: [n.velocity for n in p.instruments[0].notes]
  assert ends(plain) != ends(with_lora) or vels(plain) != vels(with_lora)

  # Scored on the held-out song only: baseline and base for the base, and the adapter too.
  base_result = evaluate.evaluate_run(str(tmp_path / "base"))
  lora_result = evaluate.evaluate_run(str(tmp_path / "piano"))
  assert [p.piece for p in lora_result.pieces] == ["pop909/song5"]
  assert sorted(base_result.pooled) == ["base", "baseline"]
  assert sorted(lora_result.pooled) == ["adapted", "base", "baseline"]
  assert lora_result.pooled["base"] == base_result.pooled["base"]
  assert lora_result.pooled["adapted"] != lora_result.pooled["base"]
  table = evaluate.markdown([base_result, lora_result], mean_label="mean")
  assert "| piano | pop909/song5 | 72 | adapted |" in table and "**mean**" in table


def test_preparation_errors(manifest, tmp_path):
  folder = str(tmp_path / "none")
  with pytest.raises(splits.SplitError, match=r"duv.instrument '\(\?i\)guitar' matches no "
                                             r"row.*\['piano'\]"):
    training.prepare(_config("base.py", manifest, folder, **{"duv.instrument": "(?i)guitar"}),
                     str(tmp_path / "w"))
  with pytest.raises(config_lib.ConfigError, match=r"duv.valid_tail must be in \(0, 1\)"):
    training.prepare(_config("base.py", manifest, folder, **{"duv.valid_tail": 1.0}),
                     str(tmp_path / "w"))
  with pytest.raises(splits.SplitError, match=r"duv.heldout 'song9' matches none of the pieces"):
    training.prepare(_config("base.py", manifest, folder, **{"duv.heldout": "song9"}),
                     str(tmp_path / "w"))
  with pytest.raises(splits.SplitError, match=r"duv.pieces 'maestro' matches no"):
    training.prepare(_config("base.py", manifest, folder, **{"duv.pieces": "maestro"}),
                     str(tmp_path / "w"))
  with pytest.raises(config_lib.ConfigError, match=r"duv.features names 'loudness'"):
    training.prepare(_config("base.py", manifest, folder, **{"duv.features": ("loudness",)}),
                     str(tmp_path / "w"))
  with pytest.raises(ValueError, match="do not fill one batch of 4096"):
    training.prepare(_config("base.py", manifest, folder, **{"data.batch_size": 4096}),
                     str(tmp_path / "w"))
  # An adapter run needs its base bundle, with the config's model size.
  with pytest.raises(bundle.BundleError, match="no model config"):
    training.prepare(_config("guitar.py", manifest, folder), str(tmp_path / "w"))
  rows = duv_manifest.read_manifest(manifest)
  assert {r["instrument"] for r in rows} == {"piano"}


def _launch(program: str, config: str, workdir, manifest: str, folder: str, cache):
  """Run launch/<program>.py with configs/duv/<config>:tiny at test size; (exit status, output)."""
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
         "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": str(cache),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
  done = subprocess.run(
      [sys.executable, str(_ROOT / "launch" / f"{program}.py"),
       f"--config={_ROOT / 'configs' / 'duv' / config}:tiny", f"--workdir={workdir}",
       f"--config.duv.manifest={manifest}", f"--config.duv.bundle={folder}",
       "--config.model.n_layers=1", "--config.duv.heldout=song5$"],
      env=env, capture_output=True, text=True, timeout=600)
  return done.returncode, done.stdout + done.stderr


def test_guitar_bass_drums_train_end_to_end_through_the_launchers(band_manifest, tmp_path):
  folder, cache = str(tmp_path / "models"), tmp_path / "jax_cache"
  rows = duv_manifest.read_manifest(band_manifest)
  assert {r["instrument"] for r in rows} == {"piano", "guitar", "bass", "drums"}
  code, out = _launch("train_duv", "base.py", tmp_path / "base", band_manifest, folder, cache)
  assert code == 0, out[-3000:]
  for name in ("guitar", "bass", "drums"):
    code, out = _launch("train_duv_lora", f"{name}.py", tmp_path / name, band_manifest, folder,
                        cache)
    assert code == 0, out[-3000:]
    path = os.path.join(folder, f"{name}.lora")
    assert f"wrote {path}" in out
    assert len(bundle.load_model(path).adapter.adapter.modules()) == 5  # 1 layer x 5 targets
    record = splits.read_record(str(tmp_path / name / splits.RECORD_FILE))
    assert record.train_notes == sum(r["n_notes"] for r in rows if r["instrument"] == name
                                     and r["piece_id"] != "pop909/song5")
  # Each program trains its own kind: the base's config is refused by the adapter program.
  code, out = _launch("train_duv_lora", "base.py", tmp_path / "wrong", band_manifest, folder,
                      cache)
  assert code == 1 and out.strip().splitlines()[-1] == (
      "train_duv_lora: error: this program trains training.type 'lora'; the config says 'full'")


def test_a_config_reading_a_missing_sibling_names_it(tmp_path):
  config = tmp_path / "lute.py"
  with pytest.raises(FileNotFoundError, match=f"{config} reads the config file "
                                              f"{tmp_path / 'base.py'}, which does not exist"):
    config_files.sibling(str(config), "base")
  assert config_files.sibling(str(_ROOT / "configs" / "duv" / "piano.py"), "base").SEED_TARGETS
