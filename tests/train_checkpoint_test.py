"""Checkpoints: what survives, what is refused, what a resume checks."""

import flax.struct
import jax.numpy as jnp
import numpy as np
import pytest

from lora_jax.train import checkpoint
from lora_jax.train.batches import Position
from lora_jax.train.config import CkptConfig


@flax.struct.dataclass
class State:
  params: dict
  opt_state: dict


def state(value: float) -> State:
  return State({"a": jnp.full((2, 2), value)}, {"mu": jnp.zeros((2, 2))})


LOOP = checkpoint.LoopState(Position(1, 3), 0.5, 2)


def test_keeps_the_last_n_and_the_best_by_validation_loss(tmp_path):
  ckpts = checkpoint.Checkpoints(str(tmp_path), CkptConfig(every_steps=1, keep_last=2,
                                                           keep_best=1))
  try:
    for step, val in zip(range(1, 6), [5.0, 1.0, 4.0, None, 2.0]):
      assert ckpts.save(step, state(float(step)), LOOP, {"m": step}, val_loss=val)
    assert not ckpts.save(5, state(5.0), LOOP, {"m": 5})  # never overwritten
    ckpts.wait()
    assert ckpts.manager.all_steps() == [2, 4, 5]
    assert ckpts.best_step() == 2
    restored, loop, meta = ckpts.restore(2, state(0.0))
    np.testing.assert_array_equal(restored.params["a"], np.full((2, 2), 2.0))
    assert loop == LOOP and meta == {"m": 2}
  finally:
    ckpts.close()


def test_a_non_finite_state_is_never_written(tmp_path):
  ckpts = checkpoint.Checkpoints(str(tmp_path), CkptConfig(every_steps=1, keep_last=2,
                                                           keep_best=1))
  try:
    with pytest.raises(checkpoint.NonFiniteStateError, match="refusing to checkpoint step 3"):
      ckpts.save(3, state(float("nan")), LOOP, {})
    ckpts.wait()
    assert ckpts.manager.all_steps() == []
  finally:
    ckpts.close()


def test_resume_checks_the_run_it_belongs_to():
  saved = {"family": "music_lm", "base_fingerprint": "abc", "lora_spec": "{}",
           "training_type": "lora", "parent_adapter": ""}
  checkpoint.check_resumable(saved, dict(saved))
  with pytest.raises(ValueError, match=r"base_fingerprint 'abc', this run has 'def'"):
    checkpoint.check_resumable(saved, dict(saved, base_fingerprint="def"))
