"""DUV humanisation data: performance/score pairs, note features, manifests and baselines."""
