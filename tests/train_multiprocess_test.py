"""A multi-process run, as on a TPU pod: two processes with four CPU devices each train one
adapter over a (data 4, fsdp 2) mesh that spans both, and end with the parameters an
eight-device single-process run reaches; one process writes the files."""

import csv
import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np

from lora_jax import lora, tree_paths

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = [sys.executable, str(ROOT / "launch" / "train.py"),
          "--config=" + str(ROOT / "configs" / "music_lm.py") + ":tiny",
          "--config.training.steps=12", "--config.mesh.data=4", "--config.mesh.fsdp=2"]


def env(devices: int) -> dict:
  e = dict(os.environ)
  e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  e["JAX_PLATFORMS"] = "cpu"
  return e


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def adapter_params(workdir) -> dict:
  record = lora.load_adapter(str(workdir / "adapter.lora"))
  return {tree_paths.dotted(k): np.asarray(v)
          for k, v in tree_paths.flatten(record.adapter.params).items()}


def test_two_processes_train_as_one_eight_device_process(tmp_path):
  single = tmp_path / "single"
  subprocess.run(LAUNCH + [f"--workdir={single}"], env=env(8), check=True, timeout=600,
                 capture_output=True)

  multi = tmp_path / "multi"
  port = free_port()
  procs = [subprocess.Popen(
      LAUNCH + [f"--workdir={multi}", "--distributed", f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2", f"--process_id={i}"],
      env=env(4), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  assert "process 1 of 2" in outputs[1] and "on 8 devices (4 here" in outputs[0]

  want, got = adapter_params(single), adapter_params(multi)
  assert sorted(got) == sorted(want)
  for k in want:
    # Cross-process reductions (gloo) may add in another order than in-process ones.
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)
  with open(multi / "status.json") as f:
    assert json.load(f)["state"] == "finished"
  with open(multi / "metrics.csv") as f:
    rows = list(csv.DictReader(f))
  assert [int(r["step"]) for r in rows] == [0, 5, 10, 12]  # one writer: no repeated rows


def test_parent_and_child_launchers_train_across_two_processes(tmp_path):
  """launch/train_parent_adapter.py, then train_child_adapter.py over that parent, with
  --distributed: two processes of four devices give the adapters one process of eight does, and
  the same files (process 0 writes the seed's .lora and vocab.json)."""
  import jax
  import jax.numpy as jnp
  from lora_jax.data import midi_tokenizer as mt
  from lora_jax.hierarchy import base_file, settings
  from lora_jax.models.transformer import MusicTransformer
  import hierarchy_testlib

  packs = tmp_path / "packs"
  # Pieces of 12 bars: the waltz's one validation piece must fill an eval batch on 8 devices.
  hierarchy_testlib.write_genre(str(packs), "folk", ["waltz", "march"], n_bars=12)
  defaults = hierarchy_testlib.write_configs(str(tmp_path / "configs"), "folk", ["waltz", "march"])
  tokenizer = mt.MidiTokenizer(mt.MidiTokenizerConfig())
  size = settings.ModelSettings(vocab_size=tokenizer.vocab_size, d_model=16, n_heads=2,
                                n_layers=1, d_ff=32, max_len=64, dropout=0.0)
  model = MusicTransformer(base_file.BaseModel("", size, None, "", {}).transformer_config())
  params = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
  base = tmp_path / "base" / "base_model.safetensors"
  base_file.save_model(str(base), base_file.host(params), size, {})
  tokenizer.save_vocab(str(tmp_path / "base"))

  common = [f"--config={defaults}:tiny", "--parent=folk", f"--base-model={base}",
            "--batch-size=8", f"--config.data.cache_dir={tmp_path / 'windows'}"]
  scripts = {"folk": ["train_parent_adapter.py", f"--pack={packs / 'folk'}", "--epochs=2"],
             "folk/waltz": ["train_child_adapter.py", "--child=waltz",
                            f"--pack={packs / 'folk' / 'waltz'}", "--epochs=2"]}

  def train(level: str, out, distributed: bool) -> None:
    script, *args = scripts[level]
    command = [sys.executable, str(ROOT / "launch" / script), *common, *args,
               f"--output-dir={out}"]
    if not distributed:
      done = subprocess.run(command, env=env(8), capture_output=True, text=True, timeout=600)
      assert done.returncode == 0, done.stderr[-3000:]
      return
    port = free_port()
    procs = [subprocess.Popen(
        command + ["--distributed", f"--coordinator_address=127.0.0.1:{port}",
                   "--num_processes=2", f"--process_id={i}"],
        env=env(4), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out_text in zip(procs, outputs):
      assert p.returncode == 0, out_text[-3000:]
    assert all("on 8 devices" in out_text for out_text in outputs)

  read = lambda path: {tree_paths.dotted(k): np.asarray(v) for k, v in tree_paths.flatten(
      lora.load_adapter(str(path)).adapter.params).items()}
  single, multi = tmp_path / "single", tmp_path / "multi"
  for level in ("folk", "folk/waltz"):  # the child trains over its own run's parent
    train(level, single, distributed=False)
    train(level, multi, distributed=True)
    name = level.split("/")[-1]
    want, got = read(single / level / f"{name}.lora"), read(multi / level / f"{name}.lora")
    assert sorted(got) == sorted(want)
    for k in want:
      np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=f"{level} {k}")
    assert (multi / level / "vocab.json").is_file()
    files = lambda root: sorted(p.name for p in (root / level).iterdir())
    assert files(multi) == files(single)
