"""The in-memory batch iterator: deterministic per-epoch shuffles, resumable positions."""

import numpy as np
import pytest

from lora_jax.train import batches


def data(n: int = 10) -> dict:
  return {"x": np.arange(n, dtype=np.int32)[:, None], "y": np.arange(n, dtype=np.float32)}


def take(it, n):
  return [next(it) for _ in range(n)]


def test_epochs_are_shuffled_deterministically_and_cover_the_data():
  a = take(batches.BatchIterator(data(), 3, seed=1), 6)
  b = take(batches.BatchIterator(data(), 3, seed=1), 6)
  c = take(batches.BatchIterator(data(), 3, seed=2), 6)
  for (ba, ea, enda), (bb, eb, endb) in zip(a, b):
    np.testing.assert_array_equal(ba["x"], bb["x"])
    assert (ea, enda) == (eb, endb)
  assert any(not np.array_equal(x[0]["x"], y[0]["x"]) for x, y in zip(a, c))
  epoch0 = np.concatenate([batch["x"][:, 0] for batch, _, _ in a[:3]])
  epoch1 = np.concatenate([batch["x"][:, 0] for batch, _, _ in a[3:]])
  assert len(set(epoch0)) == 9 and not np.array_equal(epoch0, epoch1)  # 10 // 3: one dropped
  assert [(e, end) for _, e, end in a] == [(0, False), (0, False), (0, True),
                                           (1, False), (1, False), (1, True)]
  np.testing.assert_array_equal(a[0][0]["y"], a[0][0]["x"][:, 0])  # rows stay aligned


def test_a_resumed_iterator_continues_exactly():
  whole = batches.BatchIterator(data(), 3, seed=4)
  expected = take(whole, 7)
  first = batches.BatchIterator(data(), 3, seed=4)
  take(first, 4)
  assert first.position == batches.Position(1, 1)
  resumed = batches.BatchIterator(data(), 3, seed=4, position=first.position)
  for (want, _, _), (got, _, _) in zip(expected[4:], take(resumed, 3)):
    np.testing.assert_array_equal(want["x"], got["x"])


def test_errors_quote_the_numbers():
  with pytest.raises(ValueError, match=r"10 examples do not fill one batch of 16"):
    batches.BatchIterator(data(), 16, seed=0)
  with pytest.raises(ValueError, match=r"differ in length: \{'x': 10, 'y': 9\}"):
    batches.BatchIterator({"x": np.zeros(10), "y": np.zeros(9)}, 2, seed=0)
  with pytest.raises(ValueError, match=r"batch of 6 does not split into 4 micro-batches"):
    batches.micro_batches({"x": np.zeros((6, 2))}, 4)
  with pytest.raises(ValueError, match=r"validation set of 10 examples does not fill one eval "
                                       r"batch of 12"):
    batches.eval_batches(data(), 12)
  assert batches.micro_batches({"x": np.zeros((8, 2))}, 4)["x"].shape == (4, 2, 2)
