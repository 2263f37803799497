"""MIDI files sampled from a model: the base with adapters applied at run time, or a merged model.

The prompt is BOS, or a primer MIDI file tokenized (its first `primer_bars` bars, without EOS);
the model continues it with cached decoding (`lora_jax.models.decode.sample`: temperature, top-k,
top-p, seed; adapter weights are data). Sampling is constrained by the tokenizer's grammar
(`lora_jax.data.token_grammar`), so every sample decodes in full; `program` forces the instrument
of every sampled Program token (a primer keeps its own), and `min_bars` holds EOS back until that
many bars (the primer's included). Each sample is cut after its first EOS
and decoded to MIDI with the tokenizer (`truncated=True` when no EOS came, so a sample cut by the
length limit drops its unfinished last note or bar header).

With `grammar=False` the model samples freely, as before the constraint: a sample the grammar
rejects part-way (say a Duration where a Pitch belongs) keeps its longest valid prefix, and the
report (`samples.json` and the returned `Sample`s) says where and why, so nothing is dropped
unannounced.
"""

import dataclasses
import json
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pretty_midi

from lora_jax import atomic, lora
from lora_jax.data import midi_tokenizer, token_grammar
from lora_jax.hierarchy import base_file, merging
from lora_jax.models import decode


@dataclasses.dataclass(frozen=True)
class Sample:
  """One generated file."""

  path: str
  n_tokens: int  # prompt included, up to and with EOS
  n_notes: int
  ended: bool  # the model emitted EOS
  problem: str  # '' or why the tail was cut: the grammar error and the tokens kept
  programs: tuple[int, ...] = ()  # programs of its notes (128: drums)


def prompt_tokens(tokenizer: midi_tokenizer.MidiTokenizer, primer: str, primer_bars: int
                  ) -> list[int]:
  """BOS, or a primer MIDI's tokens (first `primer_bars` bars when > 0) without EOS."""
  if not primer:
    return [midi_tokenizer.BOS]
  try:
    pm = pretty_midi.PrettyMIDI(primer)
  except Exception as e:  # pretty_midi/mido raise many types on a bad file
    raise ValueError(f"cannot read primer {primer}: {type(e).__name__}: {e}") from e
  tokens = tokenizer.encode(pm)[:-1]  # drop EOS: the model continues the piece
  if primer_bars > 0:
    bars = [i for i, t in enumerate(tokens) if t == tokenizer.ids["Bar"]]
    if len(bars) > primer_bars:
      tokens = tokens[:bars[primer_bars]]
  return tokens


def _longest_valid_prefix(tokenizer: midi_tokenizer.MidiTokenizer, tokens: list[int]) -> int:
  """Length of the longest prefix that decodes with truncated=True (validity is prefix-closed)."""
  lo, hi = 1, len(tokens)  # BOS alone decodes
  while lo < hi:
    mid = (lo + hi + 1) // 2
    try:
      tokenizer.decode(tokens[:mid], truncated=True)
      lo = mid
    except midi_tokenizer.TokenSequenceError:
      hi = mid - 1
  return lo


def to_midi(tokenizer: midi_tokenizer.MidiTokenizer, tokens: Sequence[int]
            ) -> tuple[pretty_midi.PrettyMIDI, int, bool, str]:
  """(MIDI, tokens used, ended with EOS, problem) of one sampled row (see the module docstring)."""
  tokens = [int(t) for t in tokens]
  ended = midi_tokenizer.EOS in tokens
  if ended:
    tokens = tokens[:tokens.index(midi_tokenizer.EOS) + 1]
  try:
    return tokenizer.decode(tokens, truncated=not ended), len(tokens), ended, ""
  except midi_tokenizer.TokenSequenceError as e:
    keep = _longest_valid_prefix(tokenizer, tokens)
    problem = f"{e}; kept the first {keep} of {len(tokens)} tokens"
    return tokenizer.decode(tokens[:keep], truncated=True), keep, False, problem


def generate(model_path: str, adapter_paths: Sequence[str], weights: Sequence[float], *,
             blend_mode: str, output_dir: str, n_samples: int, length: int, temperature: float,
             top_k: int, top_p: float, seed: int, primer: str = "", primer_bars: int = 0,
             prefix: str = "sample", program: int | None = None, grammar: bool = True,
             min_bars: int = 0) -> list[Sample]:
  """Sample `n_samples` MIDI files into `output_dir` (see the module docstring)."""
  decode.check_sampling(temperature, top_k, top_p)  # before any model is read
  if len(weights) != len(adapter_paths):
    raise ValueError(f"{len(adapter_paths)} adapters but {len(weights)} weights")
  if n_samples < 1 or length < 1:
    raise ValueError(f"n_samples {n_samples} and length {length} must be >= 1")
  if program is not None and not grammar:
    raise ValueError(f"program {program} is forced through the grammar constraint, which "
                     f"grammar=False (--nogrammar) turns off")
  if min_bars and not grammar:
    raise ValueError(f"min_bars {min_bars} holds EOS back through the grammar constraint, which "
                     f"grammar=False (--nogrammar) turns off")
  base = base_file.load_model(model_path)
  tokenizer = base_file.load_tokenizer(base.path, base.settings)
  loaded = [merging.load(role, p, base) for role, p in _roles(adapter_paths)]
  if loaded:
    merging.check(base, loaded)
  prompt = prompt_tokens(tokenizer, primer, primer_bars)
  room = base.settings.max_len - len(prompt)
  if length > room:
    raise ValueError(f"prompt of {len(prompt)} tokens + length {length} exceeds the model's "
                     f"max_len {base.settings.max_len}; lower --length or --primer_bars")
  effective = lora.blend_weights(blend_mode, weights) if weights else jnp.zeros((0,))
  constraint = token_grammar.build(tokenizer, program, min_bars) if grammar else None
  rows = decode.sample(base.model(), base.params, jnp.asarray([prompt] * n_samples, jnp.int32),
                       length, adapters=[a.record.adapter for a in loaded],
                       weights=[float(w) for w in np.asarray(effective)],
                       rng=jax.random.key(seed), temperature=temperature, top_k=top_k,
                       top_p=top_p, constraint=constraint)
  rows = np.asarray(jax.device_get(rows))
  samples, midis = [], []
  for i, row in enumerate(rows):
    pm, used, ended, problem = to_midi(tokenizer, row)
    if grammar and problem:
      raise RuntimeError(f"sample {i} breaks the grammar despite the constraint: {problem}")
    path = os.path.join(output_dir, f"{prefix}_{i:02d}.mid")
    midis.append(pm)
    programs = sorted({midi_tokenizer.DRUM_PROGRAM if x.is_drum else x.program
                       for x in pm.instruments})
    samples.append(Sample(os.path.abspath(path), used, sum(len(x.notes) for x in pm.instruments),
                          ended, problem, tuple(programs)))
  report = {"model": base.path, "adapters": [{"path": a.path, "name": a.record.name,
                                              "weight": w} for a, w in zip(loaded, weights)],
            "blend_mode": blend_mode, "prompt_tokens": len(prompt), "primer": primer,
            "length": length, "temperature": temperature, "top_k": top_k, "top_p": top_p,
            "seed": seed, "grammar": grammar, "program": program, "min_bars": min_bars,
            "samples": [dataclasses.asdict(s) for s in samples]}
  paths = [s.path for s in samples] + [os.path.join(output_dir, f"{prefix}s.json")]
  with atomic.atomic_paths(*paths) as tmps:  # the files and their report appear together
    for pm, tmp in zip(midis, tmps):
      pm.write(tmp)
    atomic.write_text(tmps[-1], json.dumps(report, indent=1) + "\n")
  return samples


def _roles(paths: Sequence[str]) -> list[tuple[str, str]]:
  """Roles of run-time adapters by their recorded level: a child is checked against its parent."""
  out = []
  for p in paths:
    record_level = lora.load_adapter(p).extra.get("level")
    out.append((record_level if record_level in ("parent", "child") else "adapter", p))
  roles = [r for r, _ in out]
  if roles.count("parent") > 1 or roles.count("child") > 1:
    raise ValueError(f"at most one parent and one child adapter at a time, got roles {roles}")
  return out
