"""How estimates are scored against the truth: tempo within a tolerance, keys by MIREX weights."""


def tempo_correct(estimate: float, truth: float, tolerance: float = 0.04,
                  octaves: bool = False) -> bool:
  """Within `tolerance` of the truth (or of its double or half, with `octaves`)."""
  targets = (truth, 2 * truth, truth / 2) if octaves else (truth,)
  return any(abs(estimate / t - 1) <= tolerance for t in targets)


def mirex_key_score(tonic: int, mode: str, true_tonic: int, true_mode: str) -> float:
  """MIREX key weights: 1 exact, 0.5 a fifth off in the same mode, 0.3 relative, 0.2 parallel."""
  interval = (tonic - true_tonic) % 12
  if mode == true_mode:
    return 1.0 if interval == 0 else 0.5 if interval in (5, 7) else 0.0
  if interval == 0:
    return 0.2
  relative = 9 if true_mode == "major" else 3
  return 0.3 if interval == relative else 0.0
