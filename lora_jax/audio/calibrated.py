"""A shipped classifier: multinomial logistic regression, temperature-scaled, with a refusal threshold.

The model is data (JSON: feature names, standardisation, weights, temperature, threshold), never a
pickle. `fit` fits on one set of rows and calibrates on another: the temperature minimises the
validation negative log-likelihood, and the threshold is the lowest confidence at which validation
guesses are right at least `target_accuracy` of the time; below it a guess reads "unknown".
"""

import dataclasses
import json

import numpy as np


@dataclasses.dataclass(frozen=True)
class Model:
  features: tuple[str, ...]
  classes: tuple[str, ...]
  mean: np.ndarray
  scale: np.ndarray
  weights: np.ndarray  # classes x features
  bias: np.ndarray
  temperature: float
  threshold: float

  def probabilities(self, x: np.ndarray) -> np.ndarray:
    logits = ((x - self.mean) / self.scale) @ self.weights.T + self.bias
    logits = logits / self.temperature
    logits = logits - logits.max(axis=-1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=-1, keepdims=True)

  def guess(self, x: np.ndarray) -> tuple[str, float, tuple[tuple[str, float], ...]]:
    """(class or "unknown" below the threshold, its probability, every class's probability)."""
    p = self.probabilities(x[None])[0]
    best = int(np.argmax(p))
    name = self.classes[best] if p[best] >= self.threshold else "unknown"
    return name, round(float(p[best]), 3), tuple((c, round(float(q), 3))
                                                 for c, q in zip(self.classes, p))

  def to_json(self) -> str:
    return json.dumps({"features": list(self.features), "classes": list(self.classes),
                       "mean": self.mean.tolist(), "scale": self.scale.tolist(),
                       "weights": self.weights.tolist(), "bias": self.bias.tolist(),
                       "temperature": self.temperature, "threshold": self.threshold}, indent=1)

  @classmethod
  def from_json(cls, text: str, features: tuple[str, ...]) -> "Model":
    """The model in `text`; a ValueError when it was fitted on other features than `features`."""
    d = json.loads(text)
    if tuple(d["features"]) != features:
      raise ValueError(f"model features {d['features']} are not this code's {list(features)}")
    return cls(features, tuple(d["classes"]), np.array(d["mean"]), np.array(d["scale"]),
               np.array(d["weights"]), np.array(d["bias"]), float(d["temperature"]),
               float(d["threshold"]))


def fit(features: tuple[str, ...], classes: tuple[str, ...], x_fit: np.ndarray, y_fit: np.ndarray,
        x_val: np.ndarray, y_val: np.ndarray, c: float = 1.0,
        target_accuracy: float = 0.8) -> tuple[Model, Model]:
  """(uncalibrated, calibrated) models fitted on the fit rows, calibrated on the validation rows."""
  from sklearn import linear_model  # only the benches fit; analysis only reads the JSON
  missing = sorted(set(range(len(classes))) - set(y_fit.tolist()))
  if missing:
    raise ValueError(f"classes {[classes[i] for i in missing]} have no fitting rows")
  mean, scale = x_fit.mean(0), x_fit.std(0) + 1e-9
  clf = linear_model.LogisticRegression(C=c, max_iter=5000).fit((x_fit - mean) / scale, y_fit)
  raw = Model(features, classes, mean, scale, clf.coef_, clf.intercept_, 1.0, 0.0)

  def nll(t: float) -> float:
    p = dataclasses.replace(raw, temperature=t).probabilities(x_val)
    return -float(np.mean(np.log(p[np.arange(len(y_val)), y_val] + 1e-12)))

  temperature = float(min(np.exp(np.linspace(np.log(0.25), np.log(4), 41)), key=nll))
  pv = dataclasses.replace(raw, temperature=temperature).probabilities(x_val)
  threshold = 0.0
  for t in np.linspace(0, 0.95, 20):
    answered = pv.max(1) >= t
    if answered.any() and (pv.argmax(1) == y_val)[answered].mean() >= target_accuracy:
      threshold = float(t)
      break
  return raw, dataclasses.replace(raw, temperature=temperature, threshold=round(threshold, 3))


def expected_calibration_error(p: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
  """Mean gap between confidence and accuracy over equal-width confidence bins."""
  confidence, correct = p.max(1), p.argmax(1) == y
  edges = np.linspace(0, 1, bins + 1)
  total = 0.0
  for lo, hi in zip(edges[:-1], edges[1:]):
    inside = (confidence > lo) & (confidence <= hi)
    if inside.any():
      total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
  return float(total)
