"""The hierarchy's launch scripts end to end on tiny packs, in subprocesses as a user runs them:
train a base, a parent twice (the second run resumes), a child, check, merge, generate; and bad
input ends in one error line with exit status 1."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp

from lora_jax.data import midi_tokenizer as mt
from lora_jax.hierarchy import base_file
from lora_jax.models.transformer import MusicTransformer
import hierarchy_testlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def launch(script: str, *args: str, tmp_path, check: bool = True) -> subprocess.CompletedProcess:
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
  env["JAX_PLATFORMS"] = "cpu"
  env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "xla_cache")
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  done = subprocess.run([sys.executable, str(ROOT / "launch" / script), *args], env=env,
                        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                        timeout=300)
  if check:
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
  return done


def one_error_line(done: subprocess.CompletedProcess, script: str, message: str) -> str:
  """The run failed with exit 1 and its last stderr line is the one error line, no traceback."""
  assert done.returncode == 1, done.stderr[-3000:]
  lines = done.stderr.strip().splitlines()
  assert lines[-1].startswith(f"{script}: error: ") and message in lines[-1], lines[-3:]
  assert "Traceback" not in done.stderr
  return lines[-1]


def status(run_dir) -> dict:
  with open(os.path.join(run_dir, "status.json")) as f:
    return json.load(f)


def write_other_base(folder) -> str:
  """A base of the tiny size with other weights: adapters of the real base must not fit it."""
  size = base_file.read_settings(str(folder.parent / "base" / "base_model.safetensors"))[0]
  model = MusicTransformer(base_file.BaseModel("", size, None, "", {}).transformer_config())
  params = model.init(jax.random.key(123), jnp.zeros((1, 8), jnp.int32))["params"]
  path = folder / "base_model.safetensors"
  base_file.save_model(str(path), base_file.host(params), size, {})
  mt.MidiTokenizer(mt.MidiTokenizerConfig()).save_vocab(str(folder))
  return str(path)


def test_train_merge_generate_resume_and_errors(tmp_path):
  packs = tmp_path / "packs"
  hierarchy_testlib.write_genre(str(packs), "folk", ["waltz", "march"], program=40)
  hierarchy_testlib.write_genre(str(packs), "other", ["song", "air"], program=53)
  defaults = hierarchy_testlib.write_configs(str(tmp_path / "configs"), "folk", ["waltz", "march"])
  cache = f"--config.data.cache_dir={tmp_path / 'windows'}"
  adapter_config = f"--config={defaults}:tiny"

  launch("train_base.py", f"--config={ROOT / 'configs' / 'base_model.py'}:tiny",
         f"--packs={packs / 'other'}", "--output-dir", str(tmp_path / "base"), cache,
         tmp_path=tmp_path)
  base = str(tmp_path / "base" / "base_model.safetensors")
  assert os.path.isfile(tmp_path / "base" / "vocab.json")

  # Parent: one epoch, then the same command with two epochs resumes from the first's checkpoint.
  parent_args = [adapter_config, "--parent", "folk", "--pack", str(packs / "folk"),
                 "--base-model", base, "--output-dir", str(tmp_path / "adapters"),
                 "--batch-size=8", cache]
  launch("train_parent_adapter.py", *parent_args, "--epochs=1", tmp_path=tmp_path)
  run_dir = tmp_path / "adapters" / "folk" / "run"
  first = status(run_dir)["step"]
  assert status(run_dir)["state"] == "finished" and first > 0
  again = launch("train_parent_adapter.py", *parent_args, "--epochs=2", tmp_path=tmp_path)
  assert f"resumed from step {first}" in again.stderr
  assert status(run_dir)["state"] == "finished" and status(run_dir)["step"] == 2 * first
  parent = tmp_path / "adapters" / "folk" / "folk.lora"
  assert parent.is_file() and (parent.parent / "vocab.json").is_file()
  steps = [int(line.split(",")[0]) for line in
           (run_dir / "metrics.csv").read_text().splitlines()[1:]]
  assert steps == sorted(set(steps)) and steps[-1] == 2 * first

  # Child over the parent (found at its default place under --output-dir).
  launch("train_child_adapter.py", adapter_config, "--parent=folk", "--child=waltz",
         f"--pack={packs / 'folk' / 'waltz'}", f"--base-model={base}",
         f"--output-dir={tmp_path / 'adapters'}", "--rank=2", cache, tmp_path=tmp_path)
  child = tmp_path / "adapters" / "folk" / "waltz" / "waltz.lora"
  assert child.is_file() and (child.parent / "vocab.json").is_file()

  # Compatibility: a report on the real base; one error line on a base they were not trained on.
  ok = launch("merge_adapters.py", "--test-compatibility", f"--base-model={base}",
              f"--parent-adapter={parent}", f"--child-adapter={child}", tmp_path=tmp_path)
  assert ok.stdout.strip().splitlines()[-1] == "compatible" and "over parent folk" in ok.stdout
  other = write_other_base(tmp_path / "other_base")
  bad = launch("merge_adapters.py", "--test-compatibility", f"--base-model={other}",
               f"--parent-adapter={parent}", f"--child-adapter={child}", tmp_path=tmp_path,
               check=False)
  one_error_line(bad, "merge_adapters", "(wrong base?)")
  assert len(bad.stderr.strip().splitlines()) == 1 and "compatible" not in bad.stdout

  # Merges (one with its inference config and a PyTorch export); the levels' NLL; samples.
  merged = tmp_path / "merged" / "waltz_model.safetensors"
  launch("merge_adapters.py", f"--base-model={base}", f"--parent-adapter={parent}",
         f"--child-adapter={child}", "--blend-mode=interpolative", "--parent-weight=1.0",
         "--child-weight=0.5", f"--output={merged}", "--create-config",
         f"--torch-output={tmp_path / 'merged' / 'waltz_model.pt'}", tmp_path=tmp_path)
  additive = tmp_path / "merged" / "additive.safetensors"
  launch("merge_adapters.py", f"--base-model={base}", f"--parent-adapter={parent}",
         f"--child-adapter={child}", f"--output={additive}", tmp_path=tmp_path)
  config = json.loads((tmp_path / "merged" / "waltz_model.json").read_text())
  assert [round(a["effective_weight"], 4) for a in config["merged_from"]["adapters"]] == [
      0.6667, 0.3333]
  assert (tmp_path / "merged" / "waltz_model.pt").is_file()
  nll = launch("evaluate_nll.py", f"--base-model={base}", f"--parent-adapter={parent}",
                f"--child-adapter={child}", f"--merged={additive}",
                f"--packs={packs / 'folk' / 'waltz'},{packs / 'folk' / 'march'}", "--seq-len=32",
                f"--cache-dir={tmp_path / 'windows'}", tmp_path=tmp_path)
  rows = {line[:22].strip(): [float(v) for v in line[22:].split()]
          for line in nll.stdout.splitlines()[2:6]}  # after the heading and the columns
  assert list(rows) == ["base", "base + parent", "base + parent + child", "merged"]
  assert max(abs(a - b) for a, b in zip(rows["merged"], rows["base + parent + child"])) < 1e-3
  launch("generate.py", f"--inference-config={tmp_path / 'merged' / 'waltz_model.json'}",
         "--n-samples=2", "--length=16", "--temperature=0.8", "--top-k=20", "--program=drums",
         f"--output-dir={tmp_path / 'samples'}", tmp_path=tmp_path)
  report = json.loads((tmp_path / "samples" / "samples.json").read_text())
  assert len(report["samples"]) == 2 and report["grammar"] and report["program"] == mt.DRUM_PROGRAM
  assert all(os.path.getsize(s["path"]) > 0 for s in report["samples"])
  assert all(s["problem"] == "" and set(s["programs"]) <= {mt.DRUM_PROGRAM}
             for s in report["samples"])

  # Bad input: one line each.
  missing = launch("train_parent_adapter.py", *parent_args[:4], str(packs / "nowhere"),
                   *parent_args[5:], tmp_path=tmp_path, check=False)
  one_error_line(missing, "train_parent_adapter", "style pack directory does not exist")
  empty = packs / "empty"
  (empty / "refs_midi").mkdir(parents=True)
  (empty / "manifest.json").write_text(json.dumps({
      "format": "lora_jax.style_pack/1", "style": "folk", "parent": None, "children": [],
      "pieces": []}))
  empty_run = launch("train_parent_adapter.py", *parent_args[:4], str(empty), *parent_args[5:],
                     tmp_path=tmp_path, check=False)
  one_error_line(empty_run, "train_parent_adapter", "pack lists no pieces")
  piano = launch("generate.py", f"--model={base}", "--program=piano", tmp_path=tmp_path,
                 check=False)
  one_error_line(piano, "generate", "--program 'piano' is not a General MIDI program 0..127")
