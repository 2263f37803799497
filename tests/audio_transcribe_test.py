"""Audio to MIDI: basic-pitch's shipped ONNX model finds the notes of a rendered melody, offline,
and --to_midi writes each row's notes beside the table."""
import json
import os

import pretty_midi
import pytest
import soundfile

from lora_jax.audio import batch, render, transcribe



@pytest.fixture(scope="module")
def melody(tmp_path_factory):
  pm = pretty_midi.PrettyMIDI()
  violin = pretty_midi.Instrument(program=40)
  pitches = [67, 69, 71, 72, 74, 72, 71, 69, 67, 64, 62, 64, 67, 71, 74, 79]
  violin.notes = [pretty_midi.Note(90, p, 0.4 * i, 0.4 * i + 0.36) for i, p in enumerate(pitches)]
  pm.instruments.append(violin)
  path = str(tmp_path_factory.mktemp("melody") / "melody.wav")
  soundfile.write(path, render.render(pm), render.SAMPLE_RATE)
  return pm, path


def test_rendered_melody_is_transcribed(melody):
  reference, path = melody
  precision, recall, f = transcribe.note_f_measure(reference, transcribe.transcribe(path))
  assert f >= 0.5 and recall >= 0.6, (precision, recall, f)  # measured: 0.50, 0.69, 0.58
  shifted = pretty_midi.PrettyMIDI()
  shifted.instruments.append(pretty_midi.Instrument(0))
  shifted.instruments[0].notes = [pretty_midi.Note(n.velocity, n.pitch + 1, n.start, n.end)
                                  for n in reference.instruments[0].notes]
  assert transcribe.note_f_measure(reference, shifted) == (0.0, 0.0, 0.0)  # a semitone is wrong


def test_window_keeps_notes_starting_inside_moved_to_zero(melody):
  reference, _ = melody
  part = transcribe.window(reference, 1.0, 2.0)  # onsets 1.2, 1.6
  assert [(n.pitch, round(n.start, 2)) for n in part.instruments[0].notes] == [(72, 0.2), (74, 0.6)]


def test_to_midi_writes_one_file_per_row(melody, tmp_path):
  _, path = melody
  report = batch.run([path], str(tmp_path / "out"), split_clips=False, to_midi=True)
  (row,) = report.rows
  midi = pretty_midi.PrettyMIDI(str(tmp_path / "out" / row["midi"]))
  assert sum(len(i.notes) for i in midi.instruments) >= 12
  assert json.loads((tmp_path / "out" / "report.json").read_text())["transcription"].startswith(
      "basic-pitch")
  assert os.path.isfile(tmp_path / "out" / "metadata.csv")
