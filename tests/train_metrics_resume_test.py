"""metrics.csv reads as one run after any interruption, also one before the first checkpoint."""

import csv

from lora_jax.train import metrics as metrics_lib

STEP = {"loss": 1.0, "lr": 0.1, "grad_norm": 0.5, "skipped": 0, "loss_scale": 1.0,
        "finite": True, "acc": 0.3}


def steps(workdir) -> list[int]:
  with open(workdir / "metrics.csv", newline="") as f:
    return [int(r["step"]) for r in csv.DictReader(f)]


def run(workdir, start: int, last: int) -> None:
  """What the loop writes from `start` (a baseline at 0) up to `last`, then dies."""
  progress = metrics_lib.Progress(str(workdir), ["acc"], 10, start)
  if start == 0:
    progress.baseline({"loss": 2.0, "acc": 0.1})
  for step in range(start + 1, last + 1):
    progress.add(step, 0, STEP, None, log=True)
  progress.close()


def test_a_run_killed_before_its_first_checkpoint_writes_step_0_once(tmp_path):
  run(tmp_path, 0, 3)  # killed at step 3, no checkpoint: the next run starts from 0
  run(tmp_path, 0, 5)
  assert steps(tmp_path) == [0, 1, 2, 3, 4, 5]


def test_rows_past_the_restored_step_are_dropped_and_row_0_kept(tmp_path):
  run(tmp_path, 0, 7)  # checkpointed at 4, killed at 7
  run(tmp_path, 4, 6)
  assert steps(tmp_path) == [0, 1, 2, 3, 4, 5, 6]
