"""A small folder of a user's own real MIDI, in the encodings users' files come in.

  classical/chorale/refs_midi/  Bach chorales written by music21's own MIDI writer (format 1,
                                10,080 ticks per quarter, one track per voice)
  classical/                    one chorale re-saved as format 0 (every voice in one track), and
                                a 640 s piece at 10,080 ticks per quarter (past pretty_midi's cap)
  folk/jig/, folk/reel/         O'Neill's jigs and reels from the corpus ABC, written with
                                pretty_midi at 480 ticks per quarter, directly in the folder
  folk/refs_midi/               a drum track with tempo and meter changes (written with mido)
  pop/refs_midi/                the POP909 performances (real playing, several tracks)
plus what a real folder also holds: a corrupt file, a file with no notes, an audio file in
refs_audio/ and a text file.
"""

import os
import pathlib
import shutil

import mido
import music21
from music21 import converter, meter, note, stream, tempo

from lora_jax.data.duv import match_to_midi
from lora_jax.data.style_packs import corpus as style_corpus

ROOT = pathlib.Path(__file__).resolve().parents[1]
PERFORMANCES = ROOT / ".cache" / "performances"
CHORALES = ("bach/bwv66.6", "bach/bwv10.7", "bach/bwv101.7", "bach/bwv102.7", "bach/bwv103.6")


def drum_track(path: str) -> None:
  """Format 1: tempo 100 -> 140 and meter 4/4 -> 3/4 -> 7/8, a drum channel and a bass."""
  tpq = 960
  meta = mido.MidiTrack([
      mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(100), time=0),
      mido.MetaMessage("time_signature", numerator=4, denominator=4, time=0),
      mido.MetaMessage("time_signature", numerator=3, denominator=4, time=8 * tpq),
      mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(140), time=6 * tpq),
      mido.MetaMessage("time_signature", numerator=7, denominator=8, time=0),
      mido.MetaMessage("end_of_track", time=7 * tpq)])
  drums, bass = mido.MidiTrack(), mido.MidiTrack([mido.Message("program_change", program=33)])
  for i in range(21 * 2):  # eighth notes for 21 quarters
    drums.append(mido.Message("note_on", channel=9, note=42 if i % 2 else 36, velocity=70 + i % 40,
                              time=0))
    drums.append(mido.Message("note_off", channel=9, note=42 if i % 2 else 36, time=tpq // 2))
  for i in range(21):
    bass.append(mido.Message("note_on", note=40 + i % 5, velocity=90, time=0))
    bass.append(mido.Message("note_off", note=40 + i % 5, time=tpq))
  midi = mido.MidiFile(type=1, ticks_per_beat=tpq)
  midi.tracks += [meta, drums, bass]
  midi.save(path)


def long_piece(path: str, seconds: int = 640) -> None:
  """`seconds` of quarter notes at 120 bpm written by music21 (10,080 ticks per quarter)."""
  s = stream.Stream([tempo.MetronomeMark(number=120), meter.TimeSignature("4/4")])
  for i in range(seconds * 2):
    s.append(note.Note(60 + (i * 7) % 12, quarterLength=1))
  s.write("midi", fp=path)


def format0(src: str, dst: str) -> None:
  """`src` re-saved as a format-0 file: all tracks merged into one."""
  midi = mido.MidiFile(src)
  out = mido.MidiFile(type=0, ticks_per_beat=midi.ticks_per_beat)
  out.tracks.append(mido.merge_tracks(midi.tracks))
  out.save(dst)


def _tunes(rhythm: str, n: int) -> list[str]:
  """ABC text of the first `n` of O'Neill's tunes of a rhythm, as the corpus builder labels them."""
  pieces = style_corpus.GENRES["celtic_fiddle"].collect(music21.common.getCorpusFilePath())
  return [p.abc_text for p in pieces if p.sub_style == rhythm][:n]


def make_folder(root: str, n_chorales: int = 5, n_tunes: int = 4, with_pop: bool = True,
                with_problems: bool = True) -> str:
  """Writes the folder described in the module docstring under `root`; returns `root`."""
  chorale_dir = os.path.join(root, "classical", "chorale", "refs_midi")
  os.makedirs(chorale_dir, exist_ok=True)
  for name in CHORALES[:n_chorales]:
    music21.corpus.parse(name).write("midi", fp=os.path.join(chorale_dir,
                                                             name.split("/")[1] + ".mid"))
  classical = os.path.join(root, "classical")
  format0(os.path.join(chorale_dir, "bwv66.6.mid"), os.path.join(classical, "bwv66.6_type0.mid"))
  long_piece(os.path.join(classical, "long_640s.mid"))
  for rhythm in ("jig", "reel"):
    folder = os.path.join(root, "folk", rhythm)
    os.makedirs(folder, exist_ok=True)
    for i, text in enumerate(_tunes(rhythm, n_tunes)):
      pm, _ = style_corpus.score_to_midi(converter.parseData(text, format="abc"), 40)
      pm.write(os.path.join(folder, f"{rhythm}_{i}.mid"))
  os.makedirs(os.path.join(root, "folk", "refs_midi"), exist_ok=True)
  drum_track(os.path.join(root, "folk", "refs_midi", "drums_tempo_meter.mid"))
  if with_pop:
    pop = os.path.join(root, "pop", "refs_midi")
    os.makedirs(pop, exist_ok=True)
    for f in sorted((PERFORMANCES / "pop909").glob("*.mid")):
      shutil.copyfile(f, os.path.join(pop, f.name))
  if with_problems:
    with open(os.path.join(root, "folk", "jig", "broken.mid"), "wb") as f:
      f.write(b"MThd\x00\x00\x00\x06\x00\x01\x00\x02\x01\xe0MTrk\x00\x00\x10\x00\x90")
    empty = mido.MidiFile(type=1)
    empty.tracks.append(mido.MidiTrack([mido.MetaMessage("end_of_track", time=0)]))
    empty.save(os.path.join(root, "folk", "reel", "empty.mid"))
    os.makedirs(os.path.join(root, "folk", "refs_audio"), exist_ok=True)
    with open(os.path.join(root, "folk", "refs_audio", "session.wav"), "wb") as f:
      f.write(b"RIFF")
    with open(os.path.join(root, "folk", "notes.txt"), "w") as f:
      f.write("tunes from the session\n")
  return root


def make_takes(root: str) -> str:
  """A folder of takes under `root` in the three forms the DUV builder reads from a folder:
  two POP909 performances (MIDI played to a click), the Mozart performance's .match file in
  lesson/, and the same performance as a pair in recital/: `mozart_k265_var1.mid` (as played)
  beside `mozart_k265_var1.score.mid` (as written), both written from the .match, the only real
  score/performance ground truth fetched. Returns `root`."""
  os.makedirs(os.path.join(root, "lesson"))
  for f in ("POP909_010.mid", "POP909_022.mid"):
    shutil.copyfile(PERFORMANCES / "pop909" / f, os.path.join(root, f))
  match = PERFORMANCES / "mozart" / "mozart_k265_var1.match"
  shutil.copyfile(match, os.path.join(root, "lesson", match.name))
  match_to_midi.write_match_as_midi(str(match), os.path.join(root, "recital"), match.stem)
  return root


def readme_commands() -> list[str]:
  """The README's "Your own music" commands, one string each, as a user would paste them."""
  text = (ROOT / "README.md").read_text()
  block = text.split("<!-- own-music-commands -->")[1].split("<!-- /own-music-commands -->")[0]
  lines = block.replace("\\\n", " ").splitlines()
  return [line.strip() for line in lines if line.strip().startswith("python ")]
