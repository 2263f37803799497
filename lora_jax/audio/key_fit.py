"""Fitting and choosing the key model (`key_model.py`) on a training set of rendered pieces.

`fit` minimises the softmax cross-entropy over the 24 keys plus an L2 penalty on the weights (not
the biases) with L-BFGS; the MLP starts from a fixed seed, so a fit is deterministic.
`cross_validate` scores one candidate by its mean MIREX score over k folds of the training pieces;
`choose` runs every candidate and keeps the best (ties to the earlier, simpler one). The evaluation
set plays no part here: it is scored once, afterwards, by the bench.
"""

import dataclasses

import jax
from jax.flatten_util import ravel_pytree
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from lora_jax.audio import key_model, scoring


@dataclasses.dataclass(frozen=True)
class Candidate:
  blocks: tuple[str, ...]
  hidden: int  # 0: logistic regression
  l2: float

  @property
  def name(self) -> str:
    kind = f"mlp{self.hidden}" if self.hidden else "logistic"
    return f"{kind} {'+'.join(self.blocks)} l2={self.l2:g}"


def labels(tonics: np.ndarray, modes: list[str]) -> np.ndarray:
  return np.asarray(tonics) + 12 * np.array([m == "minor" for m in modes], np.int64)


def fit(x: np.ndarray, y: np.ndarray, candidate: Candidate, seed: int = 0) -> key_model.Model:
  """x: (pieces, 12, D) rotated rows; y: key index 0..23 (tonic + 12 for minor)."""
  d = x.shape[-1]
  rng = np.random.default_rng(seed)
  if candidate.hidden:
    params = {"u": rng.normal(0, 1 / np.sqrt(d), (d, candidate.hidden)),
              "a": np.zeros(candidate.hidden),
              "v": rng.normal(0, 1 / np.sqrt(candidate.hidden), (candidate.hidden, 2)),
              "b": np.zeros(2)}
  else:
    params = {"w": np.zeros((d, 2)), "b": np.zeros(2)}
  flat, unravel = ravel_pytree({k: jnp.asarray(v, jnp.float32) for k, v in params.items()})
  xj, yj = jnp.asarray(x, jnp.float32), jnp.asarray(y)

  def loss(flat_params):
    p = unravel(flat_params)
    z = key_model.logits(p, xj, candidate.hidden, xp=jnp)
    nll = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(z), yj[:, None], axis=1))
    penalty = sum(jnp.sum(p[k] ** 2) for k in p if k not in ("a", "b"))
    return nll + candidate.l2 * penalty

  value_and_grad = jax.jit(jax.value_and_grad(loss))

  def objective(v):
    value, grad = value_and_grad(jnp.asarray(v, jnp.float32))
    return float(value), np.asarray(grad, np.float64)

  result = scipy.optimize.minimize(objective, np.asarray(flat, np.float64), jac=True,
                                   method="L-BFGS-B", options={"maxiter": 500})
  fitted = unravel(jnp.asarray(result.x, jnp.float32))
  return key_model.Model(candidate.blocks, candidate.hidden,
                         {k: np.asarray(v, np.float64) for k, v in fitted.items()})


def predict(model: key_model.Model, x: np.ndarray) -> np.ndarray:
  """Key index 0..23 of each piece."""
  return np.argmax(key_model.logits(model.params, x, model.hidden), axis=-1)


def mirex(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
  return np.array([scoring.mirex_key_score(p % 12, ("major", "minor")[p // 12], t % 12,
                                           ("major", "minor")[t // 12])
                   for p, t in zip(pred, y)])


def cross_validate(rows: dict[tuple[str, ...], np.ndarray], y: np.ndarray, candidate: Candidate,
                   folds: np.ndarray) -> float:
  """Mean MIREX score of `candidate` over the folds (each piece predicted by a fit without it)."""
  x = rows[candidate.blocks]
  scores = np.zeros(len(y))
  for f in np.unique(folds):
    held = folds == f
    model = fit(x[~held], y[~held], candidate)
    scores[held] = mirex(predict(model, x[held]), y[held])
  return float(scores.mean())


def choose(rows: dict[tuple[str, ...], np.ndarray], y: np.ndarray,
           candidates: list[Candidate], folds: np.ndarray,
           log=print) -> tuple[Candidate, list[tuple[Candidate, float]]]:
  results = []
  for c in candidates:
    results.append((c, cross_validate(rows, y, c, folds)))
    log(f"  {c.name}: cross-validated MIREX {results[-1][1]:.3f}")
  best = max(results, key=lambda r: r[1])  # max keeps the first of equal scores
  return best[0], results
