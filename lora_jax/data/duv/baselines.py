"""Trivial baselines on the held-out split, the floor any DUV model has to beat.

velocity: MAE (MIDI units) of a constant prediction, the mean velocity of the train split (all
sources pooled, and the source's own train mean). duration: MAE (beats) of predicting the deadpan
input duration. For POP909 and MAESTRO that input is the human duration snapped to the grid, so its
MAE is only the snapping error; Mozart's deadpan durations are the written ones.

With a corpus of a few pieces the held-out split may miss a source, so the same velocity baseline
is also given leave-one-piece-out: each piece scored against the mean of all other pieces, and,
as a reference, against its own mean (an oracle that knows the piece's loudness level).
"""

from typing import Sequence

import numpy as np


def _concat(rows: Sequence[dict], group: str, name: str) -> np.ndarray:
  return np.concatenate([np.asarray(r[group][name], dtype=np.float64) for r in rows]) \
      if rows else np.zeros(0)


def heldout_baselines(rows: Sequence[dict], split: str = "valid") -> dict:
  """Per source (and "all"): pieces, notes and baseline MAEs on `split`; train means used."""
  train = [r for r in rows if r["split"] == "train"]
  if not train:
    raise ValueError(f"no train rows among {len(rows)} rows: no train mean to predict")
  pooled_mean = float(_concat(train, "targets", "velocity").mean())
  out = {"train_mean_velocity": round(pooled_mean, 3), "split": split, "by_source": {}}
  sources = sorted({r["source"] for r in rows}) + ["all"]
  for source in sources:
    held = [r for r in rows if r["split"] == split and source in (r["source"], "all")]
    own = [r for r in train if source in (r["source"], "all")]
    entry = {"pieces": len({r["piece_id"] for r in held}), "notes": int(sum(r["n_notes"]
                                                                               for r in held))}
    if held:
      velocity = _concat(held, "targets", "velocity")
      entry["velocity_mae_train_mean"] = round(float(np.abs(velocity - pooled_mean).mean()), 3)
      if own:
        own_mean = float(_concat(own, "targets", "velocity").mean())
        entry["velocity_mae_source_train_mean"] = round(
            float(np.abs(velocity - own_mean).mean()), 3)
      entry["dur_beats_mae_deadpan"] = round(float(np.abs(
          _concat(held, "notes", "dur_beats") - _concat(held, "targets", "dur_beats")).mean()), 4)
    out["by_source"][source] = entry
  return out


def leave_one_piece_out_baselines(rows: Sequence[dict]) -> dict:
  """Per source (and "all"), over every piece: velocity MAE against the other pieces' mean and
  against the piece's own mean, and the deadpan duration MAE (which needs no training data)."""
  pieces = sorted({r["piece_id"] for r in rows})
  if len(pieces) < 2:
    raise ValueError(f"leave-one-piece-out needs >= 2 pieces, got {pieces}")
  velocity = {p: _concat([r for r in rows if r["piece_id"] == p], "targets", "velocity")
              for p in pieces}
  total, count = sum(v.sum() for v in velocity.values()), sum(len(v) for v in velocity.values())
  errors = {}
  for row in rows:
    p = row["piece_id"]
    if p in errors:
      continue
    others_mean = (total - velocity[p].sum()) / (count - len(velocity[p]))
    errors[p] = (row["source"], np.abs(velocity[p] - others_mean),
                 np.abs(velocity[p] - velocity[p].mean()))
  out = {}
  for source in sorted({s for s, _, _ in errors.values()}) + ["all"]:
    picked = [(e, own) for s, e, own in errors.values() if source in (s, "all")]
    err = np.concatenate([e for e, _ in picked])
    own = np.concatenate([o for _, o in picked])
    these = [r for r in rows if source in (r["source"], "all")]
    dur_err = _concat(these, "notes", "dur_beats") - _concat(these, "targets", "dur_beats")
    out[source] = {"pieces": len(picked), "notes": len(err),
                   "velocity_mae_others_mean": round(float(err.mean()), 3),
                   "velocity_mae_own_mean_oracle": round(float(own.mean()), 3),
                   "dur_beats_mae_deadpan": round(float(np.abs(dur_err).mean()), 4)}
  return out
