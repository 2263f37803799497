"""Held-out scores of trained DUV models against trivial baselines, per piece.

A run is a training workdir: its split record (`lora_jax.duv.splits`, `duv_split.json`) names the
model it wrote, the manifest and regexes that rebuild its split, and the training pieces' mean
velocity. The held-out pieces' tracks are predicted whole, windowed as `humanize` runs them
(`lora_jax.duv.predict`), and scored on every note:

  vel_raw      velocity MAE in MIDI units, predictions as they come. Baseline: every note at the
               training pieces' mean velocity.
  vel_matched  velocity MAE after shifting each piece's predictions so their mean is the piece's
               true mean. Baseline: every note at the piece's own mean (an oracle constant). This
               is the dynamics inside a piece, which the notes can tell, apart from the loudness of
               the whole piece, which deadpan notes cannot: the four POP909 songs sit at 70 and at
               about 105, and no model of the written notes can know which.
  dur          duration MAE in beats. Baseline: keep the written (deadpan) duration.

Models: `baseline`, `base` (the bundle alone) and, for an adapter run, `adapted` (bundle + LoRA).
"""

import dataclasses
import os
from typing import Sequence

import numpy as np

from lora_jax.data.duv import manifest as duv_manifest
from lora_jax.duv import bundle, predict, splits

METRICS = ("vel_raw", "vel_matched", "dur")


@dataclasses.dataclass(frozen=True)
class Scores:
  """Mean absolute errors over a set of notes."""

  vel_raw: float  # MIDI units
  vel_matched: float  # MIDI units, each piece's mean matched
  dur: float  # beats


@dataclasses.dataclass(frozen=True)
class PieceResult:
  """One held-out piece: its note count and each model's scores."""

  piece: str
  notes: int
  scores: dict[str, Scores]  # 'baseline', 'base', 'adapted'


@dataclasses.dataclass(frozen=True)
class RunResult:
  """A run's held-out pieces, and every model pooled over all their notes."""

  name: str
  record: splits.SplitRecord
  pieces: tuple[PieceResult, ...]
  pooled: dict[str, Scores]


@dataclasses.dataclass(frozen=True)
class _Errors:
  """Per-note absolute errors of one model on one piece (pooled by concatenation)."""

  vel_raw: np.ndarray
  vel_matched: np.ndarray
  dur: np.ndarray

  def scores(self) -> Scores:
    return Scores(*(float(np.mean(getattr(self, m))) for m in METRICS))


def _concat(errors: Sequence[_Errors]) -> _Errors:
  return _Errors(*(np.concatenate([getattr(e, m) for e in errors]) for m in METRICS))


def _track_inputs(rows: Sequence[dict], scaler: duv_manifest.Scaler):
  features, written = [], []
  for row in rows:
    n = len(row["notes"]["onset_beats"])
    matrix = np.concatenate([np.asarray(row["features"][k], np.float64).reshape(n, -1)
                             for k in scaler.features], axis=1)
    features.append(scaler.apply(matrix).astype(np.float32))
    written.append(np.asarray(row["notes"]["dur_beats"], np.float64))
  return features, written


def heldout_rows(rec: splits.SplitRecord, features: Sequence[str]) -> list[dict]:
  """The held-out tracks of a run, rebuilt from its manifest as training split them."""
  rows = splits.select(duv_manifest.read_manifest(rec.manifest, features), rec.instrument,
                       rec.pieces)
  held = splits.split(rows, rec.heldout, rec.valid_tail).heldout
  if not held:
    raise splits.SplitError(f"run with model {rec.model} held out no piece (duv.heldout "
                            f"{rec.heldout!r}): there is nothing unseen to evaluate on")
  found = tuple(sorted({r["piece_id"] for r in held}))
  if found != rec.heldout_pieces:
    raise splits.SplitError(f"{rec.manifest} now holds out {found}, the run held out "
                            f"{rec.heldout_pieces}: the manifest changed since training")
  return held


def evaluate_run(workdir: str, name: str | None = None) -> RunResult:
  """Scores of the baseline, the base and (adapter runs) the adapted model on held-out pieces."""
  rec = splits.read_record(os.path.join(workdir, splits.RECORD_FILE))
  model = bundle.load_model(rec.model)
  rows = heldout_rows(rec, model.scaler.features)
  features, written = _track_inputs(rows, model.scaler)
  predictions = {"base": predict.predict(model, features, written, use_adapter=False)}
  if model.adapter is not None:
    predictions["adapted"] = predict.predict(model, features, written)
  vel_true = [np.asarray(r["targets"]["velocity"], np.float64) for r in rows]
  dur_true = [np.asarray(r["targets"]["dur_beats"], np.float64) for r in rows]
  tracks_of: dict[str, list[int]] = {}
  for i, row in enumerate(rows):
    tracks_of.setdefault(row["piece_id"], []).append(i)
  pieces, pooled = [], {}
  for piece, idx in sorted(tracks_of.items()):
    cat = lambda arrays: np.concatenate([arrays[i] for i in idx])
    vel, dur = cat(vel_true), cat(dur_true)
    errors = {"baseline": _Errors(np.abs(vel - rec.train_velocity_mean),
                                  np.abs(vel - vel.mean()), np.abs(cat(written) - dur))}
    for label, preds in predictions.items():
      vel_pred, dur_pred = cat([v for v, _ in preds]), cat([d for _, d in preds])
      matched = vel_pred - vel_pred.mean() + vel.mean()
      errors[label] = _Errors(np.abs(vel_pred - vel), np.abs(matched - vel),
                              np.abs(dur_pred - dur))
    for label, err in errors.items():
      pooled.setdefault(label, []).append(err)
    pieces.append(PieceResult(piece, len(vel), {k: e.scores() for k, e in errors.items()}))
  return RunResult(name or os.path.basename(os.path.normpath(workdir)), rec, tuple(pieces),
                   {label: _concat(errs).scores() for label, errs in pooled.items()})


def mean_of(results: Sequence[RunResult]) -> dict[str, Scores]:
  """Each model's pooled scores averaged over runs with equal weight (the folds' mean)."""
  labels = [label for label in ("baseline", "base", "adapted")
            if all(label in r.pooled for r in results)]
  return {label: Scores(*(float(np.mean([getattr(r.pooled[label], m) for r in results]))
                          for m in METRICS)) for label in labels}


def _row(cells: Sequence[str]) -> str:
  return "| " + " | ".join(cells) + " |"


def _cells(scores: Scores) -> list[str]:
  return [f"{scores.vel_raw:.2f}", f"{scores.vel_matched:.2f}", f"{scores.dur:.4f}"]


def markdown(results: Sequence[RunResult], mean_label: str = "") -> str:
  """The table: per run and piece, baseline / base / adapted; a mean over runs if labelled."""
  lines = [_row(["run", "held-out piece", "notes", "model", "velocity MAE raw",
                 "velocity MAE level-matched", "duration MAE (beats)"]),
           _row(["---"] * 7)]
  for result in results:
    groups = [(p.piece, p.notes, p.scores) for p in result.pieces]
    if len(result.pieces) > 1:
      groups.append(("all held-out notes", sum(p.notes for p in result.pieces), result.pooled))
    for piece, notes, scores in groups:
      for label, s in scores.items():
        name = (f"baseline (train mean {result.record.train_velocity_mean:.1f} / own mean / "
                f"written)" if label == "baseline" else label)
        lines.append(_row([result.name, piece, str(notes), name, *_cells(s)]))
  if mean_label:
    for label, s in mean_of(results).items():
      lines.append(_row([f"**{mean_label}**", "", "", label, *_cells(s)]))
  return "\n".join(lines) + "\n"


def to_json(results: Sequence[RunResult]) -> list[dict]:
  """Results as plain data."""
  return [{"run": r.name, "model": r.record.model, "train_pieces": list(r.record.train_pieces),
           "train_velocity_mean": r.record.train_velocity_mean,
           "pieces": [{"piece": p.piece, "notes": p.notes,
                       "scores": {k: dataclasses.asdict(v) for k, v in p.scores.items()}}
                      for p in r.pieces],
           "pooled": {k: dataclasses.asdict(v) for k, v in r.pooled.items()}} for r in results]
