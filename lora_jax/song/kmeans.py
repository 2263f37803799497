"""k-means (k-means++ seeding, Lloyd iterations) in numpy: the codebooks of the song codec.

Deterministic for a given generator. With fewer distinct points than `k`, the surplus centroids
repeat points already chosen: every code still decodes to a frame seen in fitting.
"""

import numpy as np


def assign(x_NxD: np.ndarray, centers_KxD: np.ndarray, chunk: int = 8192) -> np.ndarray:
  """Index of the nearest centre of each row, int64 [N]."""
  c2 = (centers_KxD ** 2).sum(1)
  out = np.empty(len(x_NxD), np.int64)
  for start in range(0, len(x_NxD), chunk):
    x = x_NxD[start:start + chunk]
    out[start:start + chunk] = np.argmin(c2[None, :] - 2.0 * x @ centers_KxD.T, axis=1)
  return out


def _seed(x_NxD: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
  n = len(x_NxD)
  chosen = [int(rng.integers(n))]
  d2 = ((x_NxD - x_NxD[chosen[0]]) ** 2).sum(1)
  for _ in range(1, k):
    total = d2.sum()
    i = int(rng.choice(n, p=d2 / total)) if total > 0 else int(rng.integers(n))
    chosen.append(i)
    d2 = np.minimum(d2, ((x_NxD - x_NxD[i]) ** 2).sum(1))
  return x_NxD[chosen].copy()


def fit(x_NxD: np.ndarray, k: int, rng: np.random.Generator, iterations: int = 20
        ) -> np.ndarray:
  """float32 [k, D] centres of `x_NxD`."""
  x = np.asarray(x_NxD, np.float64)
  if len(x) == 0:
    raise ValueError("k-means needs at least one frame")
  centers = _seed(x, k, rng)
  for _ in range(iterations):
    labels = assign(x, centers)
    sums = np.zeros_like(centers)
    np.add.at(sums, labels, x)
    counts = np.bincount(labels, minlength=k)
    used = counts > 0  # an empty cluster keeps its centre
    new = centers.copy()
    new[used] = sums[used] / counts[used, None]
    if np.allclose(new, centers):
      break
    centers = new
  return centers.astype(np.float32)
