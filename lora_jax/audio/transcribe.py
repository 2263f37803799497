"""Audio to MIDI with basic-pitch's ONNX model, the one audio model whose weights ship in a wheel.

basic-pitch (Spotify, Apache-2.0) is installed with --no-deps, since its metadata pulls TensorFlow;
onnxruntime runs the model file inside the wheel (`saved_models/icassp_2022/nmp.onnx`), so nothing
is downloaded. Its import logs a warning for every backend it does not find (TensorFlow, TFLite,
CoreML); those are silenced during the import, and a missing package is one error line.
`note_f_measure` scores a transcription against the source MIDI the way MIREX does (mir_eval):
an estimated note matches a reference note with the same pitch (within 50 cents) whose onset is
within 50 ms; offsets are ignored.
"""

import contextlib
import logging
import os

import numpy as np
import pretty_midi

from lora_jax import errors


@contextlib.contextmanager
def _quiet_imports():
  logging.disable(logging.WARNING)
  try:
    yield
  finally:
    logging.disable(logging.NOTSET)


def _model():
  try:
    with _quiet_imports():
      import basic_pitch
      from basic_pitch import inference
  except ImportError as e:
    raise errors.UserError(f"audio to MIDI needs basic-pitch (pip install --no-deps "
                           f"basic-pitch==0.4.0; scripts/setup.sh does): {e}") from e
  path = os.path.join(os.path.dirname(basic_pitch.__file__), "saved_models", "icassp_2022",
                      "nmp.onnx")
  if not os.path.isfile(path):
    raise errors.UserError(f"basic-pitch's ONNX model is missing at {path}")
  return inference, inference.Model(path)


def transcribe(path: str) -> pretty_midi.PrettyMIDI:
  """MIDI notes of an audio file (one piano instrument, as basic-pitch writes them)."""
  inference, model = _model()
  with _quiet_imports(), open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
    _, pm, _ = inference.predict(path, model)  # prints a line per file; the caller reports
  return pm


def window(pm: pretty_midi.PrettyMIDI, start: float, end: float) -> pretty_midi.PrettyMIDI:
  """The notes of `pm` that start in [start, end), moved to start at 0 and cut at the end."""
  out = pretty_midi.PrettyMIDI()
  for instrument in pm.instruments:
    kept = pretty_midi.Instrument(instrument.program, instrument.is_drum, instrument.name)
    kept.notes = [pretty_midi.Note(n.velocity, n.pitch, n.start - start, min(n.end, end) - start)
                  for n in instrument.notes if start <= n.start < end]
    out.instruments.append(kept)
  return out


def _intervals_and_hz(pm: pretty_midi.PrettyMIDI) -> tuple[np.ndarray, np.ndarray]:
  notes = [n for i in pm.instruments if not i.is_drum for n in i.notes]
  intervals = np.array([[n.start, max(n.end, n.start + 1e-3)] for n in notes]).reshape(-1, 2)
  hz = np.array([pretty_midi.note_number_to_hz(n.pitch) for n in notes])
  return intervals, hz


def note_f_measure(reference: pretty_midi.PrettyMIDI,
                   estimate: pretty_midi.PrettyMIDI) -> tuple[float, float, float]:
  """(precision, recall, F) of notes by onset (50 ms) and pitch (50 cents), offsets ignored."""
  import mir_eval  # imported here: only the evaluation needs it

  ref_i, ref_hz = _intervals_and_hz(reference)
  est_i, est_hz = _intervals_and_hz(estimate)
  if not len(ref_hz) or not len(est_hz):
    return 0.0, 0.0, 0.0
  p, r, f, _ = mir_eval.transcription.precision_recall_f1_overlap(
      ref_i, ref_hz, est_i, est_hz, onset_tolerance=0.05, pitch_tolerance=50.0,
      offset_ratio=None)
  return float(p), float(r), float(f)
