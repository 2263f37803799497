"""The README's "Your own music" commands, run as written (with tiny steps appended) on a small
folder of real MIDI in several encodings and on real performances as takes."""

import glob
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import time

import pretty_midi
import pytest

import own_music_testlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Appended to the README's commands (absl: the last value of a flag wins): the same path in
# tiny steps. Nothing else differs from what a user runs.
TINY = {
    "train_parent_adapter.py": ["--config=configs/lora_adapter_config.py:tiny", "--epochs=1"],
    "train_child_adapter.py": ["--config=configs/lora_adapter_config.py:tiny", "--epochs=1"],
    "generate.py": ["--length=96", "--min_bars=3"],
    "build_duv_manifest.py": ["--max_len=16", "--stride=8"],
    "train_duv.py": ["--config.model.n_layers=1"],
    "train_duv_lora.py": ["--config.model.n_layers=1", "--config.data.batch_size=8",
                          "--config.duv.epochs=1", "--config.opt.warmup_steps=2"],
}
VARIANTS = {"--config=configs/duv/base.py ": "--config=configs/duv/base.py:tiny ",
            "--config=configs/duv/piano.py ": "--config=configs/duv/piano.py:tiny "}
TINY_PERFORMANCES = ["--sources=pop909"]  # the base's data: four songs, not all of MAESTRO


def test_readme_commands_end_to_end(tmp_path):
  if not os.path.isdir(own_music_testlib.PERFORMANCES / "pop909"):
    pytest.skip("real performances not fetched: run `bash scripts/fetch_performances.sh`")
  music = own_music_testlib.make_folder(str(tmp_path / "my_music"), n_tunes=3)
  takes = own_music_testlib.make_takes(str(tmp_path / "my_takes"))
  out = tmp_path / "out"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
             JAX_COMPILATION_CACHE_DIR=str(tmp_path / "xla_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  env.pop("JAX_PLATFORMS", None)  # as a user runs it: the TPU line must not show
  outputs = {}
  commands = own_music_testlib.readme_commands()
  assert len(commands) == 11
  for command in commands:
    command = (command.replace("my_music", music).replace("my_takes", takes)
               .replace("runs/own_music", str(out)))
    for plain, tiny in VARIANTS.items():
      command = command.replace(plain, tiny)
    args = shlex.split(command)
    script = os.path.basename(args[1])
    args = [sys.executable] + args[1:] + TINY.get(script, [])
    if script == "build_duv_manifest.py" and "--from_dir" not in command:
      args += TINY_PERFORMANCES
    started = time.monotonic()
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    print(f"{time.monotonic() - started:6.1f} s  {script}")
    assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    if not glob.glob("/dev/accel*"):
      assert "Unable to initialize backend 'tpu'" not in done.stderr, command
    outputs.setdefault(script, []).append(done.stdout + done.stderr)

  packs = outputs["build_style_packs.py"][0]
  assert "folk/jig/broken.mid: not a readable MIDI file" in packs and "session.wav" in packs
  assert "wrote 6 packs" in packs
  assert "genre classical trains on the defaults" in outputs["train_parent_adapter.py"][0]
  assert "sub-style classical/chorale trains on the defaults" in \
      outputs["train_child_adapter.py"][0]
  samples = sorted(glob.glob(str(out / "samples" / "sample_*.mid")))
  assert len(samples) == 2
  for sample in samples:
    pm = pretty_midi.PrettyMIDI(sample)
    assert sum(len(i.notes) for i in pm.instruments) > 0
  table = outputs["evaluate_nll.py"][0]
  assert "Held-out NLL on test pieces (bits per token; lower is better):" in table
  rows = {line.split("  ")[0].strip(): line for line in table.splitlines()}
  assert {"base", "base + parent", "base + parent + child", "merged"} <= set(rows)
  assert "classical/chorale test" in table and "folk/jig test" in table and "pop test" in table
  # evaluate_nll read the adapters' window length (the tiny config's 32), and the window caches
  # live in the packs, not in the current directory.
  assert glob.glob(str(out / "packs" / "pop" / ".windows" / "*-test-32-*.npz"))
  assert not glob.glob(str(out / "packs" / "pop" / ".windows" / "*-test-256-*.npz"))
  assert not (ROOT / ".cache" / "hierarchy_windows").exists() or not any(
      "chorale" in f for f in os.listdir(ROOT / ".cache" / "hierarchy_windows"))
  takes_report = outputs["build_duv_manifest.py"][0]
  assert re.search(r"POP909_010.mid: 1 track, \d+ notes, grid fit", takes_report)
  assert "lesson/mozart_k265_var1.match: 1 track, 218 notes" in takes_report
  # The score/performance pair: aligned, reported on the take's line, and one DUV row whose
  # input is the written notes at one deadpan velocity and whose targets are the played ones.
  assert ("recital/mozart_k265_var1.mid: 1 track, 218 notes, grid fit 1.00; aligned to "
          "mozart_k265_var1.score.mid: 218 of 219 performed notes matched") in takes_report
  assert "recital/mozart_k265_var1.score.mid" not in takes_report  # the score is not a take
  with open(out / "duv_takes" / "duv_manifest_enriched.jsonl") as f:
    rows = {r["piece_id"]: r for r in map(json.loads, f)}
  pair = rows["own/recital/mozart_k265_var1"]
  assert pair["n_notes"] == 218 and len(set(pair["notes"]["velocity"])) == 1
  assert len(set(pair["targets"]["velocity"])) > 20
  assert os.path.isfile(out / "duv_bundle" / "piano.lora")
  played = pretty_midi.PrettyMIDI(str(out / "sample_00_played.mid"))
  written = pretty_midi.PrettyMIDI(samples[0])
  assert [len(i.notes) for i in played.instruments] == [len(i.notes) for i in written.instruments]
