"""The first speed and time-left figures leave out the first step, which ran compilation."""

from lora_jax.train import metrics


def test_first_eta_excludes_the_compiling_step(tmp_path, monkeypatch):
  now = [0.0]
  monkeypatch.setattr(metrics.time, "time", lambda: now[0])
  progress = metrics.Progress(str(tmp_path), [], total_steps=100, start_step=0)
  step = {"loss": 1.0, "lr": 0.1, "grad_norm": 1.0, "skipped": 0, "loss_scale": 1.0,
          "finite": True}
  # Step 1 is read back after a minute of compilation, then one step a second.
  for i, t in zip(range(1, 8), (60.0, 61.0, 62.0, 63.0, 64.0, 65.0, 67.0)):
    now[0] = t
    written = progress.add(i, 0, step, None, log=i in (5, 7))
    assert written == (i in (5, 7))
    if i == 5:
      assert progress.rate == 1.0  # 4 steps in 4 s, not 5 steps in 64 s
  assert progress.rate == 2 / 3  # from the last row on
  progress.close()
