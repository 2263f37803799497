"""Resume checks: settings that alter the result must match the checkpoint's (unless allowed), and
a damaged latest checkpoint falls back to the previous complete one, saying so."""

import json
import logging
import os
import pathlib
import shutil

import jax
import numpy as np
import pytest

from lora_jax.train import config as config_lib
from lora_jax.train import loop
from lora_jax.train import resume

CONFIG = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "music_lm.py")
RUN = {"model.n_layers": 1, "training.steps": 12, "ckpt.every_steps": 4,
       "training.eval_every": 4, "ckpt.keep_last": 3}


def tiny(**overrides) -> config_lib.TrainConfig:
  return config_lib.load(CONFIG, "tiny", {**RUN, **overrides})


def train(workdir, config=None, **kwargs) -> loop.Result:
  return loop.train(config or tiny(), str(workdir), devices=jax.devices()[:1], **kwargs)


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
  """A run stopped at step 8 with checkpoints 4 and 8; tests copy it."""
  workdir = tmp_path_factory.mktemp("stopped") / "run"
  assert train(workdir, stop_after=8).step == 8
  return workdir


@pytest.fixture
def run(stopped, tmp_path):
  copy = tmp_path / "run"
  shutil.copytree(stopped, copy)
  return copy


def warnings(caplog) -> list[str]:
  return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_a_changed_setting_is_refused_naming_field_and_both_values(run):
  with pytest.raises(resume.ChangedConfigError) as refused:
    train(run, tiny(**{"opt.learning_rate": 0.05, "lora.alpha": 16.0}))
  message = str(refused.value)
  assert "\n" not in message
  assert "checkpoint 8 was written with other settings" in message
  assert "lora.alpha 8.0 -> 16.0; opt.learning_rate 0.03 -> 0.05" in message
  assert "allow_changed_config" in message
  assert sorted(os.listdir(run / "checkpoints")) == ["4", "8"]


def test_free_fields_may_change():
  meta = lambda config: {"config": config.to_json()}
  free = tiny(**{"training.steps": 16, "training.log_every": 1, "ckpt.every_steps": 2,
                 "training.patience": 5, "training.eval_every": 3, "ckpt.keep_last": 1,
                 "mesh.data": 2, "training.max_nonfinite_in_a_row": 2, "opt.warmup_steps": 5,
                 "data.eval_batch_size": 8})
  resume.check_config(meta(tiny()), meta(free), 8, allow_changed=False)
  with pytest.raises(resume.ChangedConfigError, match=r"data\.batch_size 16 -> 8"):
    resume.check_config(meta(tiny()), meta(tiny(**{"data.batch_size": 8})), 8, False)


def test_allow_changed_config_resumes_and_logs_the_changes(run, caplog):
  caplog.set_level(logging.INFO)
  result = train(run, tiny(**{"training.steps": 16, "opt.weight_decay": 0.1,
                              "training.allow_changed_config": True}), stop_after=1)
  assert result.step == 9 and "resumed from step 8 at epoch" in caplog.text
  assert any("opt.weight_decay 0.01 -> 0.1" in w for w in warnings(caplog)), warnings(caplog)


def test_changed_fields_lists_absent_ones():
  old = json.dumps({"opt": {"learning_rate": 0.1}, "training": {"steps": 5}})
  new = json.dumps({"opt": {"learning_rate": 0.1, "new_knob": 1}, "training": {"steps": 9}})
  assert resume.changed_fields(old, new) == {"opt.new_knob": ("<absent>", 1)}


def damage_file(step_dir: pathlib.Path, how: str) -> None:
  """Delete or truncate the largest array file of a checkpoint's state."""
  files = sorted((p for p in (step_dir / "state").rglob("*") if p.is_file()),
                 key=lambda p: p.stat().st_size)
  if how == "delete":
    files[-1].unlink()
  else:
    files[-1].write_bytes(files[-1].read_bytes()[:100])


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous(run, caplog):
  caplog.set_level(logging.INFO)
  damage_file(run / "checkpoints" / "8", "truncate")
  result = train(run, stop_after=1)
  assert result.step == 5 and "resumed from step 4 at epoch" in caplog.text
  said = warnings(caplog)
  assert any(w.startswith("checkpoint 8 does not restore") and "corrupt_checkpoints/8" in w
             for w in said), said
  assert "resuming from step 4, the newest complete checkpoint" in said
  assert (run / "corrupt_checkpoints" / "8" / "state").is_dir()  # kept for inspection
  assert sorted(os.listdir(run / "checkpoints")) == ["4", "5"]


def test_no_complete_checkpoint_starts_afresh_and_says_so(run, caplog):
  caplog.set_level(logging.INFO)
  damage_file(run / "checkpoints" / "8", "delete")
  shutil.rmtree(run / "checkpoints" / "4" / "meta")
  result = train(run, stop_after=1)
  assert result.step == 1
  assert any(w.startswith("no complete checkpoint left in") for w in warnings(caplog))
  assert sorted(os.listdir(run / "corrupt_checkpoints")) == ["4", "8"]
  rows = (run / "metrics.csv").read_text().splitlines()[1:]
  assert [r.split(",")[0] for r in rows] == ["0"]  # the baseline once (log_every is 5)


def test_the_adapter_shape_cannot_change_even_when_allowed(run):
  with pytest.raises(resume.ChangedConfigError, match=r"lora\.rank 4 -> 8; .*lora\.rank cannot "
                                                      r"change on resume, even with"):
    train(run, tiny(**{"lora.rank": 8, "training.allow_changed_config": True}))


def test_a_run_dying_of_non_finite_steps_keeps_its_last_good_checkpoint(run, tmp_path, caplog):
  empty = str(tmp_path / "empty.npz")  # every mask 0: every loss is 0/0
  np.savez(empty, tokens=np.zeros((256, 16), np.int32), mask=np.zeros((256, 16), np.float32))
  with pytest.raises(loop.NonFiniteError, match=r"3 steps in a row up to step 11"):
    train(run, tiny(**{"data.path": empty, "data.synthetic_examples": 0,
                       "training.max_nonfinite_in_a_row": 3,
                       "training.allow_changed_config": True}))
  state = json.loads((run / "status.json").read_text())
  assert state["state"] == "failed" and state["message"].startswith("NonFiniteError: 3 steps")
  assert sorted(os.listdir(run / "checkpoints")) == ["4", "8"]  # nothing of the bad steps
  caplog.set_level(logging.INFO)
  assert train(run, stop_after=1).step == 9 and "resumed from step 8" in caplog.text
