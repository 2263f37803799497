"""bench/rhythm_costs.py's split of the tokens after a note (docs/base_rhythm.md's columns)."""

import importlib.util
import pathlib

import pretty_midi

from lora_jax.data import midi_tokenizer

BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench" / "rhythm_costs.py"


def _bench():
  spec = importlib.util.spec_from_file_location("rhythm_costs", BENCH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_onsets_after_a_note_are_told_apart():
  tok = midi_tokenizer.MidiTokenizer(midi_tokenizer.MidiTokenizerConfig())
  pm = pretty_midi.PrettyMIDI(initial_tempo=120.0)  # 0.5 s a quarter
  inst = pretty_midi.Instrument(program=40)
  # Two legato quarters, a quarter's rest, a quarter that ends the 4/4 bar, one note in bar 2.
  for start, end in ((0.0, 0.5), (0.5, 1.0), (1.5, 2.0), (2.0, 2.5)):
    inst.notes.append(pretty_midi.Note(velocity=80, pitch=67, start=start, end=end))
  pm.instruments.append(inst)
  tokens = tok.encode(pm)
  contexts = _bench().rhythm_contexts(tokens, tok.tokens)
  names = {t: tok.tokens[tokens[t + 1]] for t in contexts}
  assert sorted((names[t], c) for t, c in contexts.items()) == [
      ("Bar", "Bar after a note"),
      ("Position_12", "Position = onset + duration"),
      ("Position_36", "other Position after a note")]
