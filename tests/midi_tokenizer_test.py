"""MidiTokenizer: lossless round trips on the grid, on synthetic edge cases and real pieces."""
import collections
import json
import os

import music21
import pretty_midi
import pytest

from lora_jax.data import midi_tokenizer as mt
from lora_jax.data.style_packs import corpus as style_corpus

TICKS = mt.MIDI_RESOLUTION // 12  # ticks per grid step of the default config


@pytest.fixture(scope="module")
def tok() -> mt.MidiTokenizer:
  return mt.MidiTokenizer(mt.MidiTokenizerConfig())


def grid_notes(pm: pretty_midi.PrettyMIDI, tok: mt.MidiTokenizer) -> collections.Counter:
  """(onset, pitch, duration, velocity bin, program) of every note, snapped to the grid."""
  spq, longest = tok.config.steps_per_quarter, tok.config.max_duration_quarters * 12
  notes = collections.Counter()
  for inst in pm.instruments:
    program = mt.DRUM_PROGRAM if inst.is_drum else inst.program
    for n in inst.notes:
      on = round(pm.time_to_tick(n.start) * spq / pm.resolution)
      off = round(pm.time_to_tick(n.end) * spq / pm.resolution)
      notes[(on, n.pitch, min(max(off - on, 1), longest), tok.velocity_bin(n.velocity),
             program)] += 1
  return notes


def meter_map(pm: pretty_midi.PrettyMIDI) -> list[tuple[int, int, int]]:
  """Time signature changes as (grid step, numerator, denominator), repeats removed."""
  out = []
  for ts in pm.time_signature_changes:
    step = round(pm.time_to_tick(ts.time) * 12 / pm.resolution)
    if not out or out[-1][1:] != (ts.numerator, ts.denominator):
      out.append((step, ts.numerator, ts.denominator))
  return out


def tempo_map(pm: pretty_midi.PrettyMIDI, tok: mt.MidiTokenizer) -> list[tuple[int, int]]:
  out = []
  for t, qpm in zip(*pm.get_tempo_changes()):
    step, b = round(pm.time_to_tick(t) * 12 / pm.resolution), tok.tempo_bin(qpm)
    if not out or out[-1][1] != b:
      out.append((step, b))
  return out


def add(pm, program, notes, velocity=100, is_drum=False):
  """Adds an instrument with (start step, end step, pitch) notes."""
  inst = pretty_midi.Instrument(program=program, is_drum=is_drum)
  for on, off, pitch in notes:
    inst.notes.append(pretty_midi.Note(velocity=velocity, pitch=pitch,
                                       start=pm.tick_to_time(on * TICKS),
                                       end=pm.tick_to_time(off * TICKS)))
  pm.instruments.append(inst)


def assert_round_trip(pm, tok, through_file=None):
  tokens, stats = tok.encode_with_stats(pm)
  decoded = tok.decode(tokens)
  if through_file is not None:
    decoded.write(through_file)
    decoded = pretty_midi.PrettyMIDI(through_file)
  assert grid_notes(decoded, tok) == grid_notes(pm, tok)
  assert meter_map(decoded) == meter_map(pm) or stats.n_time_signatures_moved
  assert tempo_map(decoded, tok) == tempo_map(pm, tok)
  assert tok.encode(decoded) == tokens
  return tokens, stats


def edge_case_midi(tok):
  pm = mt.midi_with_meter([(0, tok.bin_tempo(12)), (20 * 12 * TICKS, tok.bin_tempo(20))],
                          [(0, 4, 4), (8 * 12 * TICKS, 6, 8), (17 * 12 * TICKS, 4, 1)])
  add(pm, 40, [(0, 12, 60), (0, 12, 64), (0, 12, 67),  # chord
               (42, 54, 72),  # crosses the first bar line
               (52, 56, 74), (56, 60, 76), (60, 64, 77),  # eighth-note triplet
               (100, 100 + 300, 50),  # 25 quarters: clipped to 8
               (310, 316, 79)])  # in the second half of the 4/1 bar
  add(pm, 0, [(0, 6, 48), (0, 6, 48), (3, 9, 48)], velocity=33)  # duplicates and overlap
  add(pm, 0, [(12, 13, 36), (18, 19, 42)], velocity=127, is_drum=True)
  return pm


def test_vocab_size_and_layout(tok):
  assert tok.tokens[:3] == ["PAD", "BOS", "EOS"]
  assert (mt.PAD, mt.BOS, mt.EOS) == (0, 1, 2)
  assert 300 <= tok.vocab_size <= 600
  assert len(set(tok.tokens)) == tok.vocab_size


def test_edge_cases_round_trip(tok, tmp_path):
  pm = edge_case_midi(tok)
  tokens, stats = assert_round_trip(pm, tok, through_file=str(tmp_path / "rt.mid"))
  assert stats.n_notes == stats.n_encoded == 14
  assert stats.n_duration_clipped == 1
  assert stats.n_off_grid == stats.n_pitch_out_of_range == stats.n_time_signatures_moved == 0
  names = [tok.tokens[t] for t in tokens]
  assert names[:6] == ["BOS", "Bar", "TimeSig_4/4", "Position_0", "Tempo_12", "Program_0"]
  assert names[-1] == "EOS" and "Duration_96" in names and "Program_drums" in names
  assert names.count("TimeSig_4/1") == 2  # a 16-quarter bar is written as two parts


def test_overlapping_unisons_survive_a_midi_file(tok, tmp_path):
  pm = mt.midi_with_meter([(0, 120.0)], [(0, 4, 4)])
  add(pm, 52, [(0, 24, 60), (12, 36, 60), (12, 36, 60)])  # two voices in unison, one held
  tokens, _ = assert_round_trip(pm, tok)
  decoded = tok.decode(tokens)
  assert len(decoded.instruments) == 3
  decoded.write(str(tmp_path / "u.mid"))
  assert grid_notes(pretty_midi.PrettyMIDI(str(tmp_path / "u.mid")), tok) == grid_notes(pm, tok)


def test_off_grid_and_short_notes_are_counted(tok):
  pm = mt.midi_with_meter([(0, 120.0)], [(0, 4, 4)])
  inst = pretty_midi.Instrument(program=0)
  inst.notes = [pretty_midi.Note(velocity=90, pitch=60, start=0.0, end=0.01),  # < half a step
                pretty_midi.Note(velocity=90, pitch=62, start=0.5 + 0.5 / 32, end=1.0)]  # 32nd
  pm.instruments.append(inst)
  _, stats = tok.encode_with_stats(pm)
  assert (stats.n_duration_raised, stats.n_off_grid, stats.n_encoded) == (1, 2, 2)


def test_mid_bar_meter_change_moves_to_next_bar(tok):
  pm = mt.midi_with_meter([(0, 120.0)], [(0, 4, 4), (30 * TICKS, 3, 4)])
  add(pm, 0, [(0, 12, 60), (54, 60, 62)])
  tokens, stats = tok.encode_with_stats(pm)
  assert stats.n_time_signatures_moved == 1
  assert grid_notes(tok.decode(tokens), tok) == grid_notes(pm, tok)
  assert meter_map(tok.decode(tokens)) == [(0, 4, 4), (48, 3, 4)]


def test_meter_change_after_the_last_note_is_left_out(tok):
  pm = mt.midi_with_meter([(0, 120.0)], [(0, 4, 4), (30 * TICKS, 3, 4), (200 * TICKS, 1, 4)])
  add(pm, 0, [(0, 12, 60), (60, 66, 62)])
  tokens, stats = tok.encode_with_stats(pm)
  assert stats.n_time_signatures_moved == 2
  assert tok.encode(tok.decode(tokens)) == tokens
  assert [tok.tokens[t] for t in tokens].count("Bar") == 2


def test_pitch_range_drops_are_counted():
  tok = mt.MidiTokenizer(mt.MidiTokenizerConfig(pitch_min=21, pitch_max=108))
  pm = mt.midi_with_meter([(0, 120.0)], [(0, 4, 4)])
  add(pm, 0, [(0, 12, 20), (0, 12, 60), (0, 12, 109)])
  _, stats = tok.encode_with_stats(pm)
  assert (stats.n_notes, stats.n_encoded, stats.n_pitch_out_of_range) == (3, 1, 2)


def test_unsupported_meter_is_an_error(tok):
  pm = mt.midi_with_meter([(0, 120.0)], [(0, 5, 16)])
  add(pm, 0, [(0, 12, 60)])
  with pytest.raises(mt.UnsupportedMidiError, match="5/16"):
    tok.encode(pm)


def test_every_bar_window_decodes_alone(tok):
  tokens = tok.encode(edge_case_midi(tok))
  bars = [i for i, t in enumerate(tokens) if t == tok.ids["Bar"]]
  for start in bars[1:]:
    notes = grid_notes(tok.decode([mt.BOS] + tokens[start:]), tok)
    assert sum(notes.values()) > 0


@pytest.mark.parametrize("mutate, message", [
    (lambda t, ids: t[:1] + t[3:], "expected Bar first"),
    (lambda t, ids: t[:2] + t[3:], "not followed by a TimeSig"),
    (lambda t, ids: t[:-1] + [ids["Pitch_60"]], "not followed by Velocity"),
    (lambda t, ids: t + [ids["Bar"]], "other than PAD follow EOS"),
    (lambda t, ids: t[:3] + [ids["Position_60"]] + t[3:], "not after"),
    (lambda t, ids: t[:3] + [9999], "outside the vocabulary"),
])
def test_malformed_sequences_are_errors(tok, mutate, message):
  tokens = tok.encode(edge_case_midi(tok))
  with pytest.raises(mt.TokenSequenceError, match=message):
    tok.decode(mutate(tokens, tok.ids))


def test_save_and_load_vocab(tok, tmp_path):
  path = tok.save_vocab(str(tmp_path))
  assert os.listdir(tmp_path) == ["vocab.json"]  # no temporary file left behind
  loaded = mt.MidiTokenizer.load(str(tmp_path))
  assert loaded.tokens == tok.tokens and loaded.config == tok.config
  with open(path) as f:
    payload = json.load(f)
  payload["tokens"] = payload["tokens"][:-1]
  with open(path, "w") as f:
    json.dump(payload, f)
  with pytest.raises(ValueError, match="token list differs"):
    mt.MidiTokenizer.load(path)


@pytest.fixture(scope="module")
def real_pieces():
  """A jig, a reel with triplets, an Essen song in 4/1 and a Bach chorale, as the corpus writes them."""
  root = music21.common.getCorpusFilePath()
  tunes = {}
  for rel, number in (("oneills1850/0001-0050.abc", "28"), ("oneills1850/0101-0200.abc", "178"),
                      ("ryansMammoth/AcaciaReel.abc", "1")):
    tunes[f"{rel}#{number}"] = next(t for x, _, t in style_corpus.abc_tunes(root, rel)
                                    if x == number)
  essen = next(t for _, f, t in style_corpus.abc_tunes(root, "essenFolksong/altdeu10.abc")
               if f.get("M") == "4/1")
  scores = {k: music21.converter.parseData(t, format="abc") for k, t in tunes.items()}
  scores["essen 4/1"] = music21.converter.parseData(essen, format="abc")
  scores["bach/bwv269"] = music21.corpus.parse("bach/bwv269")
  return {k: style_corpus.score_to_midi(s, 40)[0] for k, s in scores.items()}


def test_real_pieces_round_trip(tok, real_pieces, tmp_path):
  for name, pm in real_pieces.items():
    file = str(tmp_path / "piece.mid")
    pm.write(file)
    pm = pretty_midi.PrettyMIDI(file)
    _, stats = assert_round_trip(pm, tok, through_file=str(tmp_path / "back.mid"))
    assert stats.n_encoded == stats.n_notes > 20, name
    assert stats.n_off_grid < 0.05 * stats.n_notes, (name, stats)
  assert len(real_pieces["bach/bwv269"].instruments) >= 4
  reel = grid_notes(real_pieces["ryansMammoth/AcaciaReel.abc#1"], tok)
  assert any(onset % 3 for onset, *_ in reel)  # triplets: only a 12-step grid holds them
  assert "TimeSig_4/1" in {tok.tokens[t] for t in tok.encode(real_pieces["essen 4/1"])}
  jig = tok.encode(real_pieces["oneills1850/0001-0050.abc#28"])
  assert tok.tokens[jig[2]] == "TimeSig_6/8"
