"""`launch/prepare_song_data.py`: WAV files + metadata.jsonl -> the fork's prepared folder.

Order, each step checked before anything later is written:
1. Read `metadata.jsonl` (`path`, `gt_lyric`, `descriptions`, `idx` per line). A bad row (not
   JSON, a missing key, an idx that cannot be a file name, a duplicate idx, an empty lyric, an
   unknown section tag, a missing audio file) is reported by line and idx; the rest prepares.
2. The codec: `paths.audio_tokenizer_path` (a codec .safetensors from `codec.py`) is loaded if it
   exists; otherwise one is fitted on these songs' audio and written there (by default
   `prepared_data_dir/audio_codec.safetensors`). An undecodable file is a bad row here.
3. Per song, `{idx}.pt` (torch.save of {'tokens': int64 [3, T], 'lyrics', 'descriptions',
   'codec'}: plain tensors and strings, read with weights_only=True), each written atomically.
   A song whose file exists and names this codec's hash is skipped: an interrupted run resumes,
   and a refitted codec re-tokenizes everything.
4. `manifest.jsonl` ({audio_path, token_path, idx}), atomically, naming every prepared song.

Analysis (decode, separate, log-mel) runs in `data.num_workers` processes when above 1.
"""

import concurrent.futures
import dataclasses
import json
import multiprocessing
import os

from absl import logging
import numpy as np
import torch

from lora_jax import atomic, errors, progress
from lora_jax.data.song import sections
from lora_jax.interop import torch_convert
from lora_jax.interop.flax_weights import WeightFileError
from lora_jax.song import codec as codec_lib
from lora_jax.song import separate
from lora_jax.song import wave_file
from lora_jax.song import yaml_config

CODEC_FILE = "audio_codec.safetensors"


class PrepareError(errors.UserError):
  """Metadata with no usable row, or a codec that does not fit the run."""


@dataclasses.dataclass(frozen=True)
class Row:
  where: str  # "metadata.jsonl:3 (idx song1)", for reports
  idx: str
  audio_path: str  # as written in the metadata
  audio_file: str  # where it was found
  lyrics: str
  descriptions: str


@dataclasses.dataclass(frozen=True)
class Summary:
  manifest: str
  codec_path: str
  codec_fitted: bool
  written: int  # token files written by this run
  skipped: int  # already prepared with this codec
  problems: tuple[str, ...]  # one line per dropped row


def _find(path: str, run: yaml_config.PrepareRun) -> str:
  candidates = [path]
  if not os.path.isabs(path):
    candidates.append(os.path.join(os.path.dirname(run.metadata_path), path))
    if run.raw_data_dir:
      candidates += [os.path.join(run.raw_data_dir, path),
                     os.path.join(run.raw_data_dir, os.path.basename(path))]
  for candidate in candidates:
    if os.path.isfile(candidate):
      return candidate
  return ""


def read_metadata(run: yaml_config.PrepareRun) -> tuple[list[Row], list[str]]:
  """The usable rows of the metadata file and one line per bad one."""
  if not os.path.isfile(run.metadata_path):
    raise PrepareError(f"paths.metadata_path {run.metadata_path} does not exist")
  rows, problems, seen = [], [], set()
  with open(run.metadata_path, encoding="utf-8") as f:
    lines = f.read().splitlines()
  for n, line in enumerate(lines, 1):
    where = f"{run.metadata_path}:{n}"
    if not line.strip():
      continue
    try:
      item = json.loads(line)
    except json.JSONDecodeError as e:
      problems.append(f"{where}: not JSON ({e.msg})")
      continue
    missing = [k for k in ("path", "gt_lyric", "descriptions", "idx")
               if not isinstance(item, dict) or k not in item]
    if missing:
      problems.append(f"{where}: lacks {', '.join(missing)}")
      continue
    idx = str(item["idx"])
    where = f"{where} (idx {idx})"
    try:
      errors.check_name(idx, "idx")  # it becomes {idx}.pt
    except errors.UserError as e:
      problems.append(f"{where}: {e}")
      continue
    if idx in seen:
      problems.append(f"{where}: duplicate idx {idx!r}")
      continue
    seen.add(idx)
    lyrics, descriptions = item["gt_lyric"], item["descriptions"]
    if not isinstance(lyrics, str) or not lyrics.strip():
      problems.append(f"{where}: empty lyric")
      continue
    if not isinstance(descriptions, str):
      problems.append(f"{where}: descriptions must be text, got {type(descriptions).__name__}")
      continue
    unknown = sections.unknown_tags(lyrics)
    if unknown:
      problems.append(f"{where}: unknown section tag {unknown[0]!r}; known: "
                      f"{' '.join(sections.SECTION_TAGS)}")
      continue
    found = _find(str(item["path"]), run)
    if not found:
      problems.append(f"{where}: audio file {item['path']} not found")
      continue
    rows.append(Row(where, idx, str(item["path"]), found, lyrics, descriptions))
  return rows, problems


def codec_path(run: yaml_config.PrepareRun) -> str:
  """Where the codec is read from or fitted to."""
  if not run.codec_path:
    return os.path.join(run.prepared_data_dir, CODEC_FILE)
  if os.path.isdir(run.codec_path) or not run.codec_path.endswith(".safetensors"):
    raise PrepareError(
        f"paths.audio_tokenizer_path {run.codec_path} is not a codec .safetensors file: the "
        "original's tokenizer folder cannot run offline; name a file written by this command "
        "(or leave it empty to fit one in the prepared folder)")
  return run.codec_path


def analyse(path: str, sample_rate: int, n_mels: int, separator: str) -> dict:
  """Stream name -> [T, n_mels] log-mel of one song (its mix, then its split)."""
  wave = wave_file.read(path, sample_rate)
  vocal, accompaniment = separate.get(separator)(wave, sample_rate)
  return {s: codec_lib.log_mel(w, sample_rate, n_mels)
          for s, w in zip(codec_lib.STREAMS, (wave, vocal, accompaniment))}


def _analyse_or_error(args):
  try:
    return analyse(*args)
  except ValueError as e:  # undecodable audio: a bad row
    return str(e)


def _analysed(rows, run, what):
  """Yields (row, features or an error line), in order, over `data.num_workers` processes."""
  jobs = [(r.audio_file, run.sample_rate, run.n_mels, run.separator) for r in rows]
  bar = progress.Progress(len(rows), what)
  if run.num_workers > 1:
    context = multiprocessing.get_context("spawn")  # JAX's threads do not survive fork
    with concurrent.futures.ProcessPoolExecutor(run.num_workers, mp_context=context) as pool:
      for row, result in zip(rows, pool.map(_analyse_or_error, jobs)):
        bar.step()
        yield row, result
  else:
    for row, job in zip(rows, jobs):
      result = _analyse_or_error(job)
      bar.step()
      yield row, result
  bar.close()


def _done(path: str, codec_id: str) -> bool:
  if not os.path.isfile(path):
    return False
  try:
    data = torch_convert.load_weights_only(path)
  except WeightFileError:
    return False
  return isinstance(data, dict) and data.get("codec") == codec_id


def _check_codec(codec: codec_lib.SongCodec, path: str, run: yaml_config.PrepareRun) -> None:
  if codec.code_count > run.code_size:
    raise PrepareError(f"codec {path} has {codec.code_count} codes, more than model.code_size "
                       f"{run.code_size}")
  if codec.sample_rate != run.sample_rate or codec.n_mels != run.n_mels:
    raise PrepareError(f"codec {path} was fitted at {codec.sample_rate} Hz with {codec.n_mels} "
                       f"mel bands; the config asks {run.sample_rate} Hz and {run.n_mels}")
  if codec.separator != run.separator:
    raise PrepareError(f"codec {path} was fitted on the {codec.separator!r} split; the config "
                       f"asks {run.separator!r}")


def prepare(run: yaml_config.PrepareRun) -> Summary:
  """Prepare (or finish preparing) `run.prepared_data_dir`."""
  separate.get(run.separator)
  codec_lib.check_sample_rate(run.sample_rate)
  codec_lib.levels_for(run.code_size)
  if run.num_workers < 0:
    raise PrepareError(f"data.num_workers must be >= 0, got {run.num_workers}")
  rows, problems = read_metadata(run)
  if not rows:
    raise PrepareError(f"{run.metadata_path}: no usable row"
                       + (f" (first problem: {problems[0]})" if problems else " (empty)"))
  path = codec_path(run)
  features, fitted = {}, not os.path.exists(path)
  if fitted:
    kept = []
    for row, result in _analysed(rows, run, "analysing songs"):
      if isinstance(result, str):
        problems.append(f"{row.where}: {result}")
      else:
        kept.append(row)
        features[row.idx] = result
    rows = kept
    if not rows:
      raise PrepareError(f"no audio could be read (first problem: {problems[0]})")
    codec = codec_lib.fit({s: [f[s] for f in features.values()] for s in codec_lib.STREAMS},
                          sample_rate=run.sample_rate, n_mels=run.n_mels,
                          separator=run.separator, code_size=run.code_size)
    codec.save(path)
  codec = codec_lib.load(path)
  _check_codec(codec, path, run)
  codec_id = codec_lib.file_id(path)
  target = lambda row: os.path.join(run.prepared_data_dir, f"{row.idx}.pt")
  todo = [r for r in rows if not _done(target(r), codec_id)]
  pending = [r for r in todo if r.idx not in features]
  analysed = _analysed(pending, run, "tokenizing songs") if pending else iter(())
  prepared = {r.idx for r in rows if r not in todo}
  written = 0
  for row in todo:
    if row.idx in features:
      result = features.pop(row.idx)
    else:
      _, result = next(analysed)
    if isinstance(result, str):
      problems.append(f"{row.where}: {result}")
      continue
    codes = np.stack([codec.streams[s].quantise(result[s]) for s in codec_lib.STREAMS])
    with atomic.atomic_paths(target(row)) as (tmp,):
      torch.save({"tokens": torch.from_numpy(codes.astype(np.int64)), "lyrics": row.lyrics,
                  "descriptions": row.descriptions, "codec": codec_id}, tmp)
    prepared.add(row.idx)
    written += 1
  manifest = os.path.join(run.prepared_data_dir, "manifest.jsonl")
  atomic.write_text(manifest, "".join(
      json.dumps({"audio_path": r.audio_path, "token_path": target(r), "idx": r.idx}) + "\n"
      for r in rows if r.idx in prepared))
  return Summary(manifest, path, fitted, written, len(rows) - len(todo), tuple(problems))


def run(yaml_path: str, base) -> Summary:
  """`launch/prepare_song_data.py`: read the YAML over `base` (configs/song_lm.py), prepare,
  and report every dropped row."""
  summary = prepare(yaml_config.read_prepare(yaml_path, base))
  for problem in summary.problems:
    logging.warning("dropped %s", problem)
  logging.info("%s codec %s; %d songs tokenized, %d already prepared, %d rows dropped; "
               "wrote %s", "fitted" if summary.codec_fitted else "loaded", summary.codec_path,
               summary.written, summary.skipped, len(summary.problems), summary.manifest)
  return summary
