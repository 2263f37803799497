"""Style packs from the music21 corpus: a genre hierarchy of real pieces, written as MIDI.

Genres (parent packs) and their sub-styles (child packs):
  celtic_fiddle: reel, jig, hornpipe  O'Neill's 1850 and Ryan's Mammoth, by the ABC `R:` field
                                      (double jig counts as jig; other dances stay in the parent)
  essen_folk: german, chinese         Essen folksongs, by the ABC `O:` field (other regions: parent)
  renaissance: palestrina, monteverdi Palestrina mass movements, Monteverdi madrigals (books 3-5);
                                      the parent's own pieces: Josquin, Lusitano
  baroque_chorale                     Bach chorales (the Riemenschneider list), no sub-styles
Which pieces a style holds comes from ABC header text and file names, with no score parsed. A piece
is parsed with music21 and its notes written with pretty_midi (music21's MIDI writer fails on some
pieces): one instrument per part, the genre's General MIDI program, velocity 80 unless the score
gives one, repeats as written (not expanded), a pickup bar padded so bars start on the grid. Grace
and unpitched notes are dropped and counted per piece (`n_dropped_notes`), and so are meters the
tokenizer cannot write, all of which music21 invents for broken or unmetered measures
(`n_dropped_meters`: 1/16 or 1/3 in a few O'Neill tunes; 24/4, 66/4 or 93/16 in Essen songs
without a meter or barlines; the notes stay). Both are summed per style in the build's stats. Bars
follow the meter from the first bar on: a short measure later in a score (end of a repeated
strain) shifts Bar tokens against the written barlines. A piece that fails to convert is listed,
with its error, in `<out>/<genre>/failures.json` and in the returned stats.
Layout and manifests are those of `style_pack`. A second build with the same arguments converts
nothing: a piece is reused when its file exists and its manifest entry has the same source hash,
converter version and program; failures are remembered the same way.
"""
from concurrent import futures
import dataclasses
import glob
import hashlib
import json
import multiprocessing
import os
import re
import time
from typing import Callable, Sequence

from absl import logging
import music21
from music21 import converter, harmony, meter, stream
import pretty_midi

from lora_jax import atomic
from lora_jax.data import midi_tokenizer
from lora_jax.data.style_packs import pack as style_pack

CONVERTER_VERSION = "music21-notes/3"  # bump when conversion output changes: invalidates caches
DEFAULT_VELOCITY = 80  # the corpus scores carry no dynamics
FAILURES = "failures.json"


@dataclasses.dataclass(frozen=True)
class CorpusPiece:
  """One piece of the music21 corpus and the sub-style it belongs to."""
  id: str  # corpus path, plus "#<X>" for one tune of a multi-tune ABC file
  sub_style: str  # a child style name, or "" for the genre's own pieces
  corpus_path: str  # file relative to the corpus root
  abc_text: str | None  # the tune's text when the file holds several tunes
  title: str


@dataclasses.dataclass(frozen=True)
class Genre:
  """A parent style: where its pieces come from and how they are written."""
  name: str
  program: int  # General MIDI program of every instrument written
  sub_styles: tuple[str, ...]
  collect: Callable[[str], list[CorpusPiece]]  # corpus root -> labelled pieces


def _files(root: str, pattern: str) -> list[str]:
  return sorted(os.path.relpath(p, root) for p in glob.glob(os.path.join(root, pattern)))


def abc_tunes(root: str, rel: str) -> list[tuple[str, dict[str, str], str]]:
  """(X number, first value of each header field, text) of each tune of an ABC file."""
  with open(os.path.join(root, rel), encoding="utf-8") as f:
    lines = f.read().splitlines()
  starts = [i for i, line in enumerate(lines) if line.startswith("X:")]
  header = [line for line in lines[:starts[0] if starts else len(lines)]
            if line.strip() and not line.startswith("%")]
  if header:
    raise ValueError(f"{rel}: file header {header[0]!r} would apply to every tune")
  tunes = []
  for a, b in zip(starts, starts[1:] + [len(lines)]):
    fields: dict[str, str] = {}
    for line in lines[a:b]:
      if re.match(r"[A-Za-z]:", line):
        fields.setdefault(line[0], line[2:].strip())
      if line.startswith("K:"):
        break
    tunes.append((fields["X"], fields, "\n".join(lines[a:b]) + "\n"))
  return tunes


_CELTIC_RHYTHMS = {"reel": "reel", "jig": "jig", "doublejig": "jig", "hornpipe": "hornpipe"}


def _celtic(root: str) -> list[CorpusPiece]:
  pieces = []
  for rel in _files(root, "oneills1850/*.abc") + _files(root, "ryansMammoth/*.abc"):
    for number, fields, text in abc_tunes(root, rel):
      rhythm = re.sub(r"[\s_-]+", "", fields.get("R", "").lower())
      pieces.append(CorpusPiece(f"{rel}#{number}", _CELTIC_RHYTHMS.get(rhythm, ""), rel, text,
                                fields.get("T", "")))
  return pieces


def _essen_region(origin: str) -> str:
  parts = [p.strip() for p in origin.split(",")]
  if parts[0] == "China":
    return "chinese"
  if any(re.fullmatch(r"Deutschland( \((BRD|DDR)\))?", p) for p in parts):
    return "german"
  return ""


def _essen(root: str) -> list[CorpusPiece]:
  pieces = []
  for rel in _files(root, "essenFolksong/*.abc"):
    if os.path.basename(rel).startswith("test"):
      continue  # music21's own test excerpts
    for number, fields, text in abc_tunes(root, rel):
      pieces.append(CorpusPiece(f"{rel}#{number}", _essen_region(fields.get("O", "")), rel, text,
                                fields.get("T", "")))
  return pieces


def _renaissance(root: str) -> list[CorpusPiece]:
  labelled = [(rel, "palestrina") for rel in _files(root, "palestrina/*.krn")]
  labelled += [(rel, "monteverdi") for rel in _files(root, "monteverdi/madrigal.*.mxl")
               if "_old" not in rel]
  labelled += [(rel, "") for rel in _files(root, "josquin/*.abc") + _files(root, "lusitano/*.mxl")]
  return [CorpusPiece(rel, style, rel, None, os.path.basename(rel)) for rel, style in labelled]


def _bach_chorales(root: str) -> list[CorpusPiece]:
  pieces = []
  for name in sorted(set(music21.corpus.chorales.Iterator(returnType="filename"))):
    found = music21.corpus.getWork(name)  # a path, or every path the name prefixes
    if isinstance(found, list):  # keep the exact name, MusicXML over Humdrum
      exact = {os.path.splitext(str(p))[1]: p for p in found
               if os.path.splitext(os.path.basename(p))[0] == os.path.basename(name)}
      if not exact:
        raise ValueError(f"chorale {name!r} names {len(found)} score files, none exactly")
      found = next(exact[ext] for ext in (".mxl", ".xml", ".krn", *exact) if ext in exact)
    rel = os.path.relpath(found, root)
    pieces.append(CorpusPiece(rel, "", rel, None, os.path.basename(name)))
  return pieces


GENRES = {g.name: g for g in (
    Genre("celtic_fiddle", 40, ("reel", "jig", "hornpipe"), _celtic),  # 40: violin
    Genre("essen_folk", 53, ("german", "chinese"), _essen),  # 53: voice oohs
    Genre("renaissance", 52, ("palestrina", "monteverdi"), _renaissance),  # 52: choir aahs
    Genre("baroque_chorale", 52, (), _bach_chorales),
)}


@dataclasses.dataclass(frozen=True)
class DroppedCounts:
  """What converting one score left out."""
  n_notes: int  # grace, unpitched and zero-length notes
  n_meters: int  # meters the tokenizer cannot write (1/16, 1/3, 24/4, 66/4): music21's inventions


# The meters of the default tokenizer's vocabulary. Every meter the corpus text states is one of
# them (at most 4/1); music21 makes up others for broken measures and for songs written without a
# meter ("M: none") or without barlines (essenFolksong/han2.abc#374: 66/4).
_METERS = frozenset(name.removeprefix("TimeSig_") for name in midi_tokenizer.MidiTokenizer(
    midi_tokenizer.MidiTokenizerConfig()).tokens if name.startswith("TimeSig_"))


def score_to_midi(score: stream.Stream, program: int) -> tuple[pretty_midi.PrettyMIDI, DroppedCounts]:
  """PrettyMIDI of a music21 score (an instrument per part) and counts of what was left out."""
  if isinstance(score, stream.Opus):
    score = score.mergeScores()  # e.g. Josquin: one ABC tune per voice
  score = score.stripTies(inPlace=False)
  parts = list(score.parts) or [score]
  measures = parts[0].getElementsByClass(stream.Measure)
  shift = float(measures[0].paddingLeft) if measures else 0.0

  def tick(offset, at_start_stays: bool = False) -> int:
    if at_start_stays and offset == 0:
      return 0  # meter and tempo of the (padded) first bar
    return round((float(offset) + shift) * midi_tokenizer.MIDI_RESOLUTION)

  tempos = []
  for start, _, mark in score.metronomeMarkBoundaries():
    qpm = mark.getQuarterBPM()
    if qpm is None:
      raise ValueError(f"tempo mark {mark!r} at quarter {start} has no number")
    tempos.append((tick(start, True), float(qpm)))
  meters: dict[int, tuple[int, int]] = {}
  n_meters_dropped = 0
  # recurse, not flatten: flatten() loses the meter of a padded pickup measure.
  for ts in parts[0].recurse().getElementsByClass(meter.TimeSignature):
    if f"{ts.numerator}/{ts.denominator}" not in _METERS:
      n_meters_dropped += 1
      continue
    meters[tick(ts.getOffsetInHierarchy(parts[0]), True)] = (ts.numerator, ts.denominator)
  changes, last = [], None
  for t, m in sorted(meters.items()):  # the last meter at a tick wins; repeats are not changes
    if m != last:
      changes.append((t, *m))
      last = m
  pm = midi_tokenizer.midi_with_meter(tempos, changes)
  n_notes_dropped = 0
  for part in parts:
    notes = []
    for element in part.flatten().notes:
      if isinstance(element, harmony.Harmony):
        continue  # chord symbols: annotations, not sounding notes
      if element.duration.isGrace or element.quarterLength == 0 or not element.pitches:
        n_notes_dropped += 1
        continue
      velocity = element.volume.velocity or DEFAULT_VELOCITY
      start = pm.tick_to_time(tick(element.offset))
      end = pm.tick_to_time(tick(element.offset + element.quarterLength))
      notes += [pretty_midi.Note(velocity=velocity, pitch=p.midi, start=start, end=end)
                for p in element.pitches]
    for voice in midi_tokenizer.split_overlapping_notes(notes):
      instrument = pretty_midi.Instrument(program=program, name=part.partName or "")
      instrument.notes = voice
      pm.instruments.append(instrument)
  return pm, DroppedCounts(n_notes_dropped, n_meters_dropped)


@dataclasses.dataclass(frozen=True)
class _Task:
  piece: CorpusPiece
  corpus_root: str
  program: int
  out_file: str


def _convert(task: _Task) -> tuple[str, dict]:
  """Converts one piece to a MIDI file; returns its id and stats, or the error it raised."""
  try:
    if task.piece.abc_text is not None:
      score = converter.parseData(task.piece.abc_text, format="abc")
    else:
      score = converter.parse(os.path.join(task.corpus_root, task.piece.corpus_path),
                              forceSource=True)
    pm, dropped = score_to_midi(score, task.program)
    n_notes = sum(len(i.notes) for i in pm.instruments)
    if not n_notes:
      raise ValueError("score holds no notes")
    tmp = f"{task.out_file}.{os.getpid()}.tmp"
    pm.write(tmp)
    os.replace(tmp, task.out_file)
    return task.piece.id, {"n_notes": n_notes, "duration": round(pm.get_end_time(), 3),
                           "n_dropped_notes": dropped.n_notes,
                           "n_dropped_meters": dropped.n_meters}
  except Exception as e:  # music21 raises many types; each failure is reported, never dropped
    return task.piece.id, {"error": f"{type(e).__name__}: {e}"[:400]}


@dataclasses.dataclass(frozen=True)
class StyleStats:
  """What one build did for one style (a genre's own pieces count under the genre name)."""
  style: str
  n_available: int  # pieces of this style in the corpus
  n_selected: int  # after the max_pieces cap
  n_converted: int
  n_cached: int  # converted by an earlier build and reused
  n_failed: int  # failed now, or earlier and remembered
  n_dropped_notes: int  # over the style's converted and cached pieces (see the module docstring)
  n_dropped_meters: int


@dataclasses.dataclass(frozen=True)
class BuildStats:
  """What a build did, per style, with every failure."""
  styles: tuple[StyleStats, ...]
  failures: tuple[dict, ...]  # {"id", "style", "error", ...}
  seconds: float


def _file_name(piece_id: str) -> str:
  return re.sub(r"[^A-Za-z0-9.-]+", "_", piece_id) + ".mid"


def _source_hash(root: str, piece: CorpusPiece) -> str:
  if piece.abc_text is not None:
    data = piece.abc_text.encode()
  else:
    with open(os.path.join(root, piece.corpus_path), "rb") as f:
      data = f.read()
  return hashlib.sha256(data).hexdigest()[:16]


def _read_json(path: str) -> dict | None:
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      payload = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise style_pack.StylePackError(f"{path}: cannot reuse, not valid JSON: {e}") from e
  if not isinstance(payload, dict):
    raise style_pack.StylePackError(f"{path}: cannot reuse, not a JSON object")
  return payload


def _run(tasks: list[_Task], workers: int) -> dict[str, dict]:
  """Converts pieces, in worker processes when workers > 1, logging progress every few seconds."""
  results: dict[str, dict] = {}
  start = last = time.monotonic()

  def record(piece_id: str, result: dict) -> None:
    nonlocal last
    results[piece_id] = result
    now = time.monotonic()
    if now - last > 5 or len(results) == len(tasks):
      failed = sum("error" in r for r in results.values())
      logging.info("converted %d/%d pieces (%d failed) in %.1f s",
                   len(results), len(tasks), failed, now - start)
      last = now

  if workers == 1 or len(tasks) < 2:
    for task in tasks:
      record(*_convert(task))
    return results
  # spawn: no fork of a caller that may hold threads (JAX); a worker that dies raises here.
  context = multiprocessing.get_context("spawn")
  with futures.ProcessPoolExecutor(min(workers, len(tasks)), mp_context=context) as pool:
    for future in futures.as_completed([pool.submit(_convert, t) for t in tasks]):
      record(*future.result())
  return results


def build_style_packs(out: str, genres: Sequence[str] | None = None,
                      max_pieces: int | None = None, workers: int = 1) -> BuildStats:
  """Builds (or refreshes) the style packs of the given genres under `out`."""
  names = list(GENRES) if genres is None else list(genres)
  unknown = [n for n in names if n not in GENRES]
  if unknown or not names:
    raise ValueError(f"unknown genres {unknown or names}; known: {sorted(GENRES)}")
  if max_pieces is not None and max_pieces < 1:
    raise ValueError(f"max_pieces {max_pieces} must be at least 1")
  if workers < 1:
    raise ValueError(f"workers {workers} must be at least 1")
  started = time.monotonic()
  root = music21.common.getCorpusFilePath()
  plans = [_plan(GENRES[n], out, root, max_pieces) for n in names]
  tasks = [t for plan in plans for t in plan.tasks]
  logging.info("%d pieces selected, %d to convert",
               sum(len(v) for p in plans for v in p.selected.values()), len(tasks))
  results = _run(tasks, workers)
  styles, failures = [], []
  for plan in plans:
    plan_styles, plan_failures = _finish(plan, results)
    styles += plan_styles
    failures += plan_failures
  return BuildStats(tuple(styles), tuple(failures), time.monotonic() - started)


def _selection_key(piece: CorpusPiece) -> str:
  """Order in which max_pieces takes pieces: a hash unrelated to the split hash."""
  return hashlib.sha256(f"select:{piece.id}".encode()).hexdigest()


@dataclasses.dataclass
class _GenrePlan:
  """A genre's selected pieces per sub-style ("" for its own), and what is left to convert."""
  genre: Genre
  dir: str
  available: dict[str, int]
  selected: dict[str, list[CorpusPiece]] = dataclasses.field(default_factory=dict)
  hashes: dict[str, str] = dataclasses.field(default_factory=dict)  # piece id -> source hash
  cached: dict[str, dict] = dataclasses.field(default_factory=dict)  # piece id -> old result
  tasks: list[_Task] = dataclasses.field(default_factory=list)


def _plan(genre: Genre, out: str, root: str, max_pieces: int | None) -> _GenrePlan:
  """Selects a genre's pieces and splits them into cached ones and tasks to run."""
  pieces = genre.collect(root)
  genre_dir = os.path.join(out, genre.name)
  by_style = {style: [p for p in pieces if p.sub_style == style]
              for style in ("",) + genre.sub_styles}
  for style, found in by_style.items():
    if style and not found:
      raise ValueError(f"sub-style {genre.name}/{style} matched no pieces in {root}")
  names = [_file_name(p.id) for p in pieces]
  if len(set(names)) != len(names):
    raise ValueError(f"{genre.name}: two piece ids map to one file name")
  old_failures = _read_json(os.path.join(genre_dir, FAILURES)) or {}
  failed_before = {f["id"]: f for f in old_failures.get("failures", [])
                   if old_failures.get("converter") == CONVERTER_VERSION}
  plan = _GenrePlan(genre, genre_dir, {s: len(v) for s, v in by_style.items()})
  for style, found in by_style.items():
    pack_dir = os.path.join(genre_dir, style) if style else genre_dir
    os.makedirs(os.path.join(pack_dir, style_pack.REFS_MIDI), exist_ok=True)
    manifest = _read_json(os.path.join(pack_dir, style_pack.MANIFEST)) or {}
    reusable = (manifest.get("converter") == CONVERTER_VERSION
                and manifest.get("program") == genre.program)
    old = {e["id"]: e for e in manifest.get("pieces", []) if reusable}
    selected = sorted(sorted(found, key=_selection_key)[:max_pieces], key=lambda p: p.id)
    plan.selected[style] = selected
    for piece in selected:
      source_hash = _source_hash(root, piece)
      plan.hashes[piece.id] = source_hash
      rel = os.path.join(style_pack.REFS_MIDI, _file_name(piece.id))
      entry = old.get(piece.id)
      if (entry and entry.get("source_hash") == source_hash and entry.get("path") == rel
          and os.path.isfile(os.path.join(pack_dir, rel))):
        plan.cached[piece.id] = entry
      elif piece.id in failed_before and failed_before[piece.id]["source_hash"] == source_hash:
        plan.cached[piece.id] = failed_before[piece.id]
      else:
        plan.tasks.append(_Task(piece, root, genre.program, os.path.join(pack_dir, rel)))
  return plan


def _finish(plan: _GenrePlan, results: dict[str, dict]) -> tuple[list[StyleStats], list[dict]]:
  """Writes a genre's manifests and failures.json, removes stale files; returns its stats."""
  genre = plan.genre
  union, failures, stats = [], [], []
  for style, selected in plan.selected.items():
    full_style = f"{genre.name}/{style}" if style else genre.name
    pack_dir = os.path.join(plan.dir, style) if style else plan.dir
    entries, n_failed, n_cached = [], 0, 0
    for piece in selected:
      rel = os.path.join(style_pack.REFS_MIDI, _file_name(piece.id))
      result = results.get(piece.id)
      if result is None:
        result = plan.cached[piece.id]
        n_cached += "error" not in result
      source = f"music21-corpus:{piece.corpus_path}"
      if "error" in result:
        n_failed += 1
        failures.append({"id": piece.id, "style": full_style, "source": source,
                         "source_hash": plan.hashes[piece.id], "error": result["error"]})
        continue
      entries.append({"id": piece.id, "source": source, "path": rel, "style": full_style,
                      "split": style_pack.split_of(piece.id), "title": piece.title,
                      "source_hash": plan.hashes[piece.id], "n_notes": result["n_notes"],
                      "duration": result["duration"],
                      "n_dropped_notes": result["n_dropped_notes"],
                      "n_dropped_meters": result["n_dropped_meters"]})
    kept = {os.path.basename(e["path"]) for e in entries}
    for stale in glob.glob(os.path.join(pack_dir, style_pack.REFS_MIDI, "*.mid")):
      if os.path.basename(stale) not in kept:
        os.remove(stale)
    if style:
      _write_manifest(pack_dir, genre, style, entries)
      union += [dict(e, path=os.path.join(style, e["path"])) for e in entries]
    else:
      union += entries
    stats.append(StyleStats(full_style, plan.available[style], len(selected),
                            len(selected) - n_cached - n_failed, n_cached, n_failed,
                            sum(e["n_dropped_notes"] for e in entries),
                            sum(e["n_dropped_meters"] for e in entries)))
  _write_manifest(plan.dir, genre, "", union)
  atomic.write_text(os.path.join(plan.dir, FAILURES), json.dumps(
      {"converter": CONVERTER_VERSION, "failures": failures}, indent=1, sort_keys=True))
  return stats, failures


def _write_manifest(pack_dir: str, genre: Genre, style: str, entries: list[dict]) -> None:
  manifest = {"format": style_pack.PACK_FORMAT, "style": style or genre.name,
              "parent": genre.name if style else None,
              "children": [] if style else list(genre.sub_styles), "program": genre.program,
              "converter": CONVERTER_VERSION, "music21_version": music21.__version__,
              "pieces": sorted(entries, key=lambda e: e["id"])}
  atomic.write_text(os.path.join(pack_dir, style_pack.MANIFEST),
                    json.dumps(manifest, indent=1, sort_keys=True))
