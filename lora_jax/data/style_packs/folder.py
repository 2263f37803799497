"""Style packs from the user's own MIDI files: a folder of genres and sub-styles, or a few files.

The folder (`build_from_dir(root, out)`):
  root/<genre>/                the genre (parent pack): its own pieces are the MIDI files directly
                               in it and anywhere under its refs_midi/
  root/<genre>/<sub_style>/    a sub-style (child pack): every MIDI file under it, at any depth
  any refs_audio/              audio: listed in the report and skipped, unless the build is given
                               a transcriber (`build_style_packs.py --transcribe_audio`: basic-pitch
                               through `lora_jax.audio`), whose MIDI then packs as the style's
Folders starting with '.' or '_' are skipped; genre and sub-style names must be plain identifiers
(they become adapter and config names). Other files are listed as ignored.

Each file is read as `midi_file.read_midi` reads it (long and fine-grained files too, within its
limits) and encoded once by the default tokenizer, so a pack never holds a file training would
refuse. A file that fails, has no notes, or repeats another file of its style byte for byte is
left out and listed, with its reason, in one report at the end; the rest still packs.

Splits are per piece and deterministic: a piece's place comes from a hash of its bytes (so a
renamed or moved file keeps its split, and copies of one file cannot straddle splits). A hash below
`test_fraction` is test, below `test_fraction + validation_fraction` validation; then, while a
style has fewer than `min_test` / `min_validation` such pieces, the training pieces with the lowest
hashes move over. A style needs at least min_validation + min_test + 1 pieces; a smaller one is
not packed and the report says how many it has. A genre with sub-styles splits its own pieces by
the hash alone: its minimums hold over the whole genre, sub-styles included.

Packs are written under `out` in `style_pack`'s layout, each file copied to `refs_midi/` under a
name made from its path; with `out` equal to `root` the manifests are written beside the files,
which stay where they are. A second build reuses every piece whose bytes and reader are unchanged
(and every remembered failure, in `<out>/<genre>/failures.json`), reading nothing again.
"""

import dataclasses
import hashlib
import json
import os
import re
import shutil
from typing import Callable, Iterable, Sequence

from lora_jax import atomic, progress
from lora_jax.data import midi_file, midi_tokenizer
from lora_jax.data.style_packs import pack as style_pack

CONVERTER = "lora_jax.folder_packs/1"  # bump when what a manifest entry holds changes
FAILURES = "failures.json"
AUDIO_DIR = "refs_audio"
AUDIO_SUFFIXES = (".wav", ".mp3", ".flac", ".ogg", ".aif", ".aiff", ".m4a")


class FolderPackError(ValueError):
  """A folder or file list that cannot become packs; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class SplitSettings:
  """How a style's pieces are split (see the module docstring)."""
  validation_fraction: float = 0.1
  test_fraction: float = 0.1
  min_validation: int = 1
  min_test: int = 1

  def __post_init__(self):
    if not (0 <= self.validation_fraction < 1 and 0 <= self.test_fraction < 1
            and self.validation_fraction + self.test_fraction < 1):
      raise FolderPackError(f"validation_fraction {self.validation_fraction} and test_fraction "
                            f"{self.test_fraction} must be in [0, 1) and leave room for training")
    if self.min_validation < 1 or self.min_test < 1:
      raise FolderPackError(f"min_validation {self.min_validation} and min_test {self.min_test} "
                            f"must be at least 1: training picks its checkpoint on validation "
                            f"pieces and the NLL table reads test pieces")

  @property
  def min_pieces(self) -> int:
    return self.min_validation + self.min_test + 1


@dataclasses.dataclass(frozen=True)
class Found:
  """One MIDI file to pack."""
  id: str  # its path relative to the folder (or `<style>/<name>` for a file list)
  path: str  # absolute
  style: str  # "<genre>" or "<genre>/<sub_style>"
  name_in_style: str  # path below its style folder, refs_midi/ dropped: the copy's name


@dataclasses.dataclass(frozen=True)
class StyleReport:
  """What a build did for one style."""
  style: str
  n_found: int  # MIDI files
  n_read: int  # read now
  n_reused: int  # from an earlier build
  n_failed: int  # unreadable, no notes, over a limit or a duplicate
  splits: dict  # split -> pieces packed ({} when not packed)
  packed: bool
  why_not: str  # '' when packed


@dataclasses.dataclass(frozen=True)
class BuildReport:
  """Everything a build did and every problem, for one report."""
  styles: tuple[StyleReport, ...]
  failures: tuple[tuple[str, str], ...]  # (file, reason)
  skipped_audio: tuple[str, ...]
  ignored: tuple[str, ...]  # neither MIDI nor audio
  packs: tuple[str, ...]  # pack folders written

  def lines(self) -> list[str]:
    """The report as text lines."""
    out = []
    for s in self.styles:
      counts = ", ".join(f"{k} {v}" for k, v in s.splits.items())
      state = f"packed: {counts}" if s.packed else f"NOT PACKED: {s.why_not}"
      out.append(f"{s.style:<28} {s.n_found:4d} MIDI files, {s.n_read} read, {s.n_reused} "
                 f"reused, {s.n_failed} failed; {state}")
    if self.failures:
      out.append(f"{len(self.failures)} files left out:")
      out += [f"  {path}: {reason}" for path, reason in self.failures]
    if self.skipped_audio:
      out.append(f"{len(self.skipped_audio)} audio files skipped (give --transcribe_audio to "
                 f"pack their notes as transcribed by basic-pitch, or convert them to MIDI):")
      out += [f"  {p}" for p in self.skipped_audio]
    if self.ignored:
      out.append(f"{len(self.ignored)} other files ignored (not MIDI): "
                 + ", ".join(self.ignored[:10]) + (" ..." if len(self.ignored) > 10 else ""))
    return out


def _skip_dir(name: str) -> bool:
  return name.startswith((".", "_"))


def _walk(folder: str) -> Iterable[str]:
  """Files under `folder`, sorted, skipping hidden and underscore folders."""
  for here, dirs, files in os.walk(folder):
    dirs[:] = sorted(d for d in dirs if not _skip_dir(d))
    for f in sorted(files):
      if not f.startswith("."):
        yield os.path.join(here, f)


def _check_style_name(name: str, where: str) -> None:
  if not re.fullmatch(r"[A-Za-z0-9_]+", name) or name == "run":
    raise FolderPackError(f"{where}: folder name {name!r} is not a plain identifier (letters, "
                          f"digits, underscores; not 'run'): it becomes the adapter's name; "
                          f"rename it, e.g. {re.sub(r'[^A-Za-z0-9_]+', '_', name).strip('_')!r}")


def discover(root: str) -> tuple[list[Found], list[str], list[str], dict[str, list[str]]]:
  """(MIDI files, audio files, other files, genre -> its sub-styles) of a folder of genres.

  An audio file is a `Found` of its style too, its `name_in_style` with the audio suffix.
  """
  root = os.path.abspath(root)
  if not os.path.isdir(root):
    raise FolderPackError(f"{root}: folder does not exist")
  found, audio, other, genres = [], [], [], {}

  def take(path: str, style: str, style_dir: str) -> None:
    rel = os.path.relpath(path, root)
    parts = os.path.relpath(path, style_dir).split(os.sep)
    name = "/".join(parts[1:] if parts[0] in (style_pack.REFS_MIDI, AUDIO_DIR) else parts)
    if AUDIO_DIR in parts[:-1] or path.lower().endswith(AUDIO_SUFFIXES):
      audio.append(Found(rel, path, style, name))
    elif midi_file.is_midi_name(path):
      found.append(Found(rel, path, style, name))
    else:
      other.append(rel)

  for genre in sorted(os.listdir(root)):
    genre_dir = os.path.join(root, genre)
    if _skip_dir(genre) or not os.path.isdir(genre_dir):
      if os.path.isfile(genre_dir) and not genre.startswith("."):
        other.append(genre)  # files must sit in a genre folder
      continue
    _check_style_name(genre, genre_dir)
    genres[genre] = []
    for entry in sorted(os.listdir(genre_dir)):
      path = os.path.join(genre_dir, entry)
      if entry.startswith(".") or (os.path.isdir(path) and _skip_dir(entry)):
        continue
      if os.path.isfile(path):
        take(path, genre, genre_dir)
      elif entry in (style_pack.REFS_MIDI, AUDIO_DIR):
        for file in _walk(path):
          take(file, genre, genre_dir)
      else:
        _check_style_name(entry, path)
        genres[genre].append(entry)
        for file in _walk(path):
          take(file, f"{genre}/{entry}", path)
  if not found and not audio:
    raise FolderPackError(f"{root}: no MIDI files in <genre>/ or <genre>/<sub_style>/ folders "
                          f"(expected e.g. {root}/pop/dance_pop/refs_midi/song.mid)")
  return found, audio, other, genres


def assign_splits(hashes: dict[str, str], settings: SplitSettings,
                  minimums: bool = True) -> dict[str, str]:
  """piece id -> split, from each piece's content hash (see the module docstring)."""
  draw = {k: int(h[:12], 16) / 16.0**12 for k, h in hashes.items()}
  cut_test, cut_val = settings.test_fraction, settings.test_fraction + settings.validation_fraction
  splits = {k: "test" if u < cut_test else "validation" if u < cut_val else "train"
            for k, u in draw.items()}
  if minimums:
    for split, least in (("test", settings.min_test), ("validation", settings.min_validation)):
      spare = sorted((k for k, s in splits.items() if s == "train"), key=lambda k: (draw[k], k))
      for k in spare[:max(0, least - sum(s == split for s in splits.values()))]:
        splits[k] = split
  return splits


def _content_hash(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def _examine(path: str, limits: midi_file.Limits,
             tokenizer: midi_tokenizer.MidiTokenizer) -> dict:
  """{'n_notes', 'duration'} of a file training can use, or {'error'}."""
  try:
    pm = midi_file.read_midi(path, limits)
    n_notes = sum(len(i.notes) for i in pm.instruments)
    if n_notes == 0:
      return {"error": "no notes"}
    tokenizer.encode(pm)
  except (midi_file.MidiReadError, midi_tokenizer.UnsupportedMidiError) as e:
    return {"error": str(e).removeprefix(f"{path}: ")}
  except Exception as e:  # any other failure of one file is reported, never fatal to the build
    return {"error": f"{type(e).__name__}: {e}"}
  return {"n_notes": n_notes, "duration": round(pm.get_end_time(), 3)}


def _read_json(path: str) -> dict:
  if not os.path.isfile(path):
    return {}
  try:
    with open(path) as f:
      payload = json.load(f)
  except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
    raise FolderPackError(f"{path}: cannot reuse it, not valid JSON ({e}); delete it to rebuild")
  return payload if isinstance(payload, dict) else {}


def _copy_name(name: str) -> str:
  stem = re.sub(r"[^A-Za-z0-9.-]+", "_", name.replace("/", "__"))
  return stem if midi_file.is_midi_name(stem) else stem + ".mid"


@dataclasses.dataclass
class _Style:
  """One style's pieces on their way to a pack."""
  name: str
  dir: str  # the pack folder
  files: list[Found]
  entries: list[dict] = dataclasses.field(default_factory=list)
  n_read: int = 0
  n_reused: int = 0
  n_failed: int = 0
  why_not: str = ""


def _limits_key(limits: midi_file.Limits) -> dict:
  return {"max_notes": limits.max_notes, "max_duration_sec": limits.max_duration_sec}


def build(found: Sequence[Found], out: str, settings: SplitSettings, limits: midi_file.Limits,
          children: dict[str, list[str]], in_place_root: str = "", audio: Sequence[str] = (),
          other: Sequence[str] = (), keep_other_styles: bool = False) -> BuildReport:
  """Reads, checks, splits and writes the packs of `found` under `out` (see the docstring)."""
  out = os.path.abspath(out)
  styles: dict[str, _Style] = {}
  for genre, subs in children.items():
    for style in [genre] + [f"{genre}/{s}" for s in subs]:
      styles[style] = _Style(style, os.path.join(out, *style.split("/")), [])
  for f in found:
    styles[f.style].files.append(f)
  for s in styles.values():
    names = [_copy_name(f.name_in_style) for f in s.files]
    if len(set(names)) != len(names):
      twice = sorted({n for n in names if names.count(n) > 1})
      raise FolderPackError(f"{s.name}: several files would be copied as {twice[0]}: rename one")

  tokenizer = midi_tokenizer.MidiTokenizer(midi_tokenizer.MidiTokenizerConfig())
  failures: list[tuple[str, str]] = []
  remembered = {g: _read_json(os.path.join(out, g, FAILURES)) for g in children}
  remembered = {g: {e["id"]: e for e in r.get("failures", [])}
                if r.get("converter") == CONVERTER and r.get("limits") == _limits_key(limits)
                else {} for g, r in remembered.items()}
  new_failures: dict[str, list[dict]] = {g: [] for g in children}
  bar = progress.Progress(len(found), "reading MIDI files")
  for s in styles.values():
    old_manifest = _read_json(os.path.join(s.dir, style_pack.MANIFEST))
    reusable = old_manifest.get("converter") == CONVERTER
    old = {e.get("id"): e for e in old_manifest.get("pieces", []) if reusable}
    genre = s.name.split("/")[0]
    seen: dict[str, str] = {}
    for f in s.files:
      digest = _content_hash(f.path)
      rel = os.path.relpath(f.path, s.dir) if in_place_root else \
          f"{style_pack.REFS_MIDI}/{_copy_name(f.name_in_style)}"
      entry, result, remember = old.get(f.id), None, False
      if (entry and entry.get("source_hash") == digest and entry.get("path") == rel
          and entry.get("n_notes", 0) <= limits.max_notes
          and entry.get("duration", 0) <= limits.max_duration_sec):
        result = {"n_notes": entry["n_notes"], "duration": entry["duration"]}
        s.n_reused += 1
      elif remembered[genre].get(f.id, {}).get("source_hash") == digest:
        result, remember = {"error": remembered[genre][f.id]["error"]}, True
      elif digest in seen:
        result = {"error": f"the same bytes as {seen[digest]}: left out so that the copies "
                           f"cannot land in different splits"}
      else:
        result, remember = _examine(f.path, limits, tokenizer), True
        s.n_read += 1
      if in_place_root and "error" not in result and not os.path.realpath(f.path).startswith(
          os.path.realpath(s.dir) + os.sep):
        result = {"error": "a link to a file outside the pack; copy the file in, or build into "
                           "another --out"}
      if "error" in result:
        s.n_failed += 1
        failures.append((f.id, result["error"]))
        if remember:  # a file's own problem; a duplicate or a link depends on the others
          new_failures[genre].append({"id": f.id, "source_hash": digest,
                                      "error": result["error"]})
      else:
        seen.setdefault(digest, f.id)
        s.entries.append({"id": f.id, "source": f"file:{f.id}", "path": rel, "style": s.name,
                          "split": "", "source_hash": digest, "n_notes": result["n_notes"],
                          "duration": result["duration"]})
      bar.step(f"{len(failures)} failed" if failures else "")
  bar.close()

  packs, reports = [], []
  for genre, subs in children.items():
    written_children = []
    for sub in subs:
      s = styles[f"{genre}/{sub}"]
      if not _split_style(s, settings, True):
        continue
      _write_pack(s, genre, [], s.entries, in_place_root)
      packs.append(s.dir)
      written_children.append(sub)
    parent = styles[genre]
    _split_style(parent, settings, not subs)
    union = list(parent.entries)
    kept_children = list(written_children)
    if keep_other_styles:
      union, kept_children = _keep_existing(parent, union, written_children)
    for sub in written_children:
      union += [dict(e, path=f"{sub}/{e['path']}") for e in styles[f"{genre}/{sub}"].entries]
    counts = {k: sum(e["split"] == k for e in union) for k in style_pack.SPLITS}
    if not parent.why_not and union and (counts["validation"] < settings.min_validation
                                         or counts["test"] < settings.min_test):
      parent.why_not = (f"{len(union)} pieces with its sub-styles, {counts['validation']} "
                        f"validation and {counts['test']} test: too few to split (needs "
                        f"{settings.min_validation} and {settings.min_test})")
    if not union and not parent.why_not:
      parent.why_not = "no readable pieces, of its own or in a packed sub-style"
    if not parent.why_not:
      _write_pack(parent, None, sorted(kept_children), union, in_place_root)
      packs.append(parent.dir)
    atomic_dir = os.path.join(out, genre)
    os.makedirs(atomic_dir, exist_ok=True)
    atomic.write_text(os.path.join(atomic_dir, FAILURES), json.dumps(
        {"converter": CONVERTER, "limits": _limits_key(limits),
         "failures": new_failures[genre]}, indent=1, sort_keys=True))
    for name in [genre] + [f"{genre}/{sub}" for sub in subs]:
      s = styles[name]
      splits = ({k: sum(e["split"] == k for e in (union if s is parent else s.entries))
                 for k in style_pack.SPLITS} if not s.why_not else {})
      reports.append(StyleReport(name, len(s.files), s.n_read, s.n_reused, s.n_failed, splits,
                                 not s.why_not, s.why_not))
  return BuildReport(tuple(reports), tuple(failures), tuple(audio), tuple(other), tuple(packs))


def _split_style(s: _Style, settings: SplitSettings, minimums: bool) -> bool:
  """Sets each entry's split; False (with `why_not`) when the style is too small to split."""
  if minimums and len(s.entries) < settings.min_pieces:
    s.why_not = (f"{len(s.entries)} readable pieces, too few to split: needs at least "
                 f"{settings.min_pieces} ({settings.min_validation} validation, "
                 f"{settings.min_test} test, 1 train)")
    return False
  splits = assign_splits({e["id"]: e["source_hash"] for e in s.entries}, settings, minimums)
  for e in s.entries:
    e["split"] = splits[e["id"]]
  return True


def _keep_existing(parent: _Style, own: list[dict], written: list[str]
                   ) -> tuple[list[dict], list[str]]:
  """For a file list: the parent's other pieces and sub-style packs already on disk, kept."""
  old = _read_json(os.path.join(parent.dir, style_pack.MANIFEST))
  union = list(own)
  if not parent.files:  # this build did not touch the genre's own pieces: keep the old ones
    union += [e for e in old.get("pieces", []) if e.get("style") == parent.name]
  children = list(written)
  for name in sorted(os.listdir(parent.dir)) if os.path.isdir(parent.dir) else []:
    manifest = os.path.join(parent.dir, name, style_pack.MANIFEST)
    if name in written or not os.path.isfile(manifest):
      continue
    pack = style_pack.load_style_pack(os.path.join(parent.dir, name))
    union += [dict(e, path=f"{name}/{e['path']}") for e in pack.manifest["pieces"]]
    children.append(name)
  return union, children


def _write_pack(s: _Style, parent: str | None, children: list[str], entries: list[dict],
                in_place_root: str) -> None:
  """Copies the files (unless in place), writes the manifest, removes stale copies.

  A file is removed only when an earlier build of this builder copied it here (its manifest lists
  it under refs_midi/) and this one does not list it: nothing a user put in a pack is deleted.
  """
  old = _read_json(os.path.join(s.dir, style_pack.MANIFEST))
  copied_before = {e.get("path") for e in old.get("pieces", [])
                   if old.get("converter") == CONVERTER and not old.get("in_place")
                   and str(e.get("path", "")).startswith(style_pack.REFS_MIDI + "/")}
  if not in_place_root:
    os.makedirs(os.path.join(s.dir, style_pack.REFS_MIDI), exist_ok=True)
    by_id = {f.id: f for f in s.files}
    for e in s.entries:
      target = os.path.join(s.dir, e["path"])
      if not os.path.isfile(target) or _content_hash(target) != e["source_hash"]:
        with atomic.atomic_path(target) as tmp:
          shutil.copyfile(by_id[e["id"]].path, tmp)
  for stale in copied_before - {e["path"] for e in entries}:
    if os.path.isfile(os.path.join(s.dir, stale)):
      os.remove(os.path.join(s.dir, stale))
  manifest = {"format": style_pack.PACK_FORMAT, "style": s.name.split("/")[-1],
              "parent": parent, "children": children, "converter": CONVERTER,
              "in_place": bool(in_place_root), "pieces": sorted(entries, key=lambda e: e["id"])}
  atomic.write_text(os.path.join(s.dir, style_pack.MANIFEST),
                    json.dumps(manifest, indent=1, sort_keys=True))


TRANSCRIBED = "_transcribed"  # per style folder under `out`: MIDI made from its audio, by content


def build_from_dir(root: str, out: str, settings: SplitSettings = SplitSettings(),
                   limits: midi_file.Limits = midi_file.Limits(),
                   audio_to_midi: Callable[[str, str], str] | None = None) -> BuildReport:
  """Packs of every genre and sub-style folder under `root`, written under `out`.

  `audio_to_midi(audio_path, cache_dir)` -> a MIDI path, when given, turns each audio file into
  a piece of its style (cached in `<out>/<style>/_transcribed/`, which discovery skips); a file
  it cannot transcribe is listed with its reason like an unreadable MIDI file.
  """
  root_real, out_real = os.path.realpath(root), os.path.realpath(out)
  if out_real != root_real and out_real.startswith(root_real + os.sep):
    raise FolderPackError(f"--out {out} is inside --from_dir {root}: it would be read as a genre; "
                          f"use another folder, or {root} itself to write manifests in place")
  found, audio, other, genres = discover(root)
  transcription_failures = []
  if audio_to_midi is not None:
    bar = progress.Progress(len(audio), "transcribing audio")
    for a in audio:
      cache = os.path.join(out, *a.style.split("/"), TRANSCRIBED)
      try:
        midi = audio_to_midi(a.path, cache)
      except (ValueError, OSError) as e:  # the transcriber's one-line reasons
        transcription_failures.append((a.id, f"not transcribed: {e}"))
      else:
        found.append(Found(a.id, midi, a.style, os.path.splitext(a.name_in_style)[0] + ".mid"))
      bar.step(a.id)
    bar.close()
    audio = []
  report = build(found, out, settings, limits, genres, root if out_real == root_real else "",
                 [a.id for a in audio], other)
  return dataclasses.replace(report, failures=tuple(transcription_failures) + report.failures)


def build_from_files(files: Sequence[str], style: str, out: str,
                     settings: SplitSettings = SplitSettings(),
                     limits: midi_file.Limits = midi_file.Limits()) -> BuildReport:
  """The pack of `style` ('genre' or 'genre/sub_style') from a list of files, under `out`.

  The genre's other sub-style packs and own pieces already under `out` are kept in its manifest.
  """
  parts = style.split("/")
  if len(parts) > 2 or not all(parts):
    raise FolderPackError(f"style {style!r} is not 'genre' or 'genre/sub_style'")
  for part in parts:
    _check_style_name(part, "--style")
  if not files:
    raise FolderPackError("no files given")
  found, audio, other = [], [], []
  for path in files:
    if not os.path.isfile(path):
      raise FolderPackError(f"{path}: no such file")
    name = os.path.basename(path)
    if name.lower().endswith(AUDIO_SUFFIXES):
      audio.append(path)
    elif not midi_file.is_midi_name(name):
      other.append(path)
    else:
      found.append(Found(f"{style}/{name}", os.path.abspath(path), style, name))
  subs = {parts[0]: parts[1:]}
  return build(found, out, settings, limits, subs, "", audio, other, keep_other_styles=True)
