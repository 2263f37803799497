"""DUV training through the shared loop, end to end on tiny files: a base bundle, then a piano
adapter beside it that humanize loads and that changes the output, both scored on a held-out song
by the evaluation; the split they train on, and the errors of a run that cannot be prepared."""

import os
import pathlib

import jax
import numpy as np
import pretty_midi
import pytest

from lora_jax import families
from lora_jax.data import duv_build, duv_manifest
from lora_jax.duv import apply, bundle, evaluate, splits, training
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


def _performance(path, n, seed):
  """A 120 bpm piece of n notes; the 'human' plays downbeats louder and notes a little shorter."""
  rng = np.random.default_rng(seed)
  pm = pretty_midi.PrettyMIDI(initial_tempo=120.0)
  inst = pretty_midi.Instrument(0, name="Piano")
  for i in range(n):
    start = i * 0.25
    velocity = 100 if i % 8 == 0 else int(rng.integers(45, 70))
    inst.notes.append(pretty_midi.Note(velocity, 48 + (i * 5) % 24, start, start + 0.2))
  pm.instruments.append(inst)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  pm.write(str(path))


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
  root = tmp_path_factory.mktemp("duv_data")
  for i in range(6):
    _performance(root / "cache" / "pop909" / f"song{i}.mid", 72, i)
  config = duv_build.BuildConfig(cache_dir=str(root / "cache"), out_dir=str(root / "build"),
                                 sources=("pop909",), max_len=16, stride=8)
  duv_build.build_duv_dataset(config)
  return str(root / "build" / "duv_manifest_enriched.jsonl")


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
  # duv.restore_best: the bundle holds the checkpoint with the lowest validation loss.
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
