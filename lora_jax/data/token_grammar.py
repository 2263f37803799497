"""The MidiTokenizer grammar as a jittable automaton, so sampling emits only tokens that decode.

A sequence is valid when `MidiTokenizer._parse` accepts it (see `midi_tokenizer`): an optional BOS
first; then bars, each `Bar TimeSig`, then Position tokens strictly ascending below the bar's
steps; at most one Tempo, right after a Position; Program only after a Position of its bar; a
note `Pitch Velocity Duration` only after a Program of its bar and a Tempo anywhere before; EOS
where no note or bar header is open, and only PAD after it.

The state is six int32 scalars (`State`): the phase (roughly the kind of the last token), the
last Position of the bar, the bar's steps (from its TimeSig), whether a Program was seen in
this bar and a Tempo so far, and the Bar tokens so far (prompt included). `allowed(state)` is the mask over the vocabulary and
`advance(state, token)` the next state, both table look-ups over the kind and value of each
token. The mask allows exactly the one-token extensions that `_parse(..., truncated=True)`
accepts, so a sample cut anywhere by the length limit decodes in full. A token the grammar
rejects sends the state to DEAD, where nothing is allowed; the sampler checks its prompt for this.

A forced program (`--program`) takes the probability of every Program token: the hierarchy's
models score pitched Program targets as a class (`music_lm.LmConfig.pooled_targets`), i.e. they
learn where a note starts, not the instrument, so the forced token gets the class's whole mass
(`logits`), and the mass of `Program_drums` (a class of its own) too, since one forced program is
one instrument for every note. Masking the other programs alone would leave the mass of the model's favourite
instrument to EOS, and empty files.

A minimum number of bars (`--min_bars`) holds EOS back until that many Bar tokens have come (a bar
longer than the tokenizer's longest is written as several, each counted): a model that ends a
piece after one note is made to go on. The samples still end where the model puts EOS after that.

The tables, the forced program and the minimum are pytree leaves, i.e. data: the jitted sampler compiles once
per shape, whichever program is forced (STYLE: values are data, not static fields).
"""

from typing import NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from lora_jax.data import midi_tokenizer

KINDS = ("PAD", "BOS", "EOS", "Bar", "TimeSig", "Position", "Tempo", "Program", "Pitch",
         "Velocity", "Duration")
(PAD, BOS, EOS, BAR, TIMESIG, POSITION, TEMPO, PROGRAM, PITCH, VELOCITY, DURATION) = range(
    len(KINDS))

# Phases: where in the grammar the sequence stands.
START = 0  # nothing read yet: BOS may come
NO_BAR = 1  # after BOS: a Bar or EOS
AFTER_BAR = 2  # a TimeSig must follow
IN_BAR = 3  # after TimeSig, Tempo, Program or Duration
AFTER_POSITION = 4  # as IN_BAR, and a Tempo may follow
AFTER_PITCH = 5  # a Velocity must follow
AFTER_VELOCITY = 6  # a Duration must follow
ENDED = 7  # after EOS: only PAD
DEAD = 8  # the grammar was broken: nothing is allowed

# Phase after a token of each kind, when the token is allowed.
_NEXT_PHASE = np.array([ENDED, NO_BAR, ENDED, AFTER_BAR, IN_BAR, AFTER_POSITION, IN_BAR, IN_BAR,
                        AFTER_PITCH, AFTER_VELOCITY, IN_BAR], np.int32)


class State(NamedTuple):
  """Grammar state of one sequence: int32 scalars (or arrays of them under vmap)."""

  phase: jax.Array
  position: jax.Array  # last Position of this bar, -1 before any
  bar_steps: jax.Array  # steps of this bar, from its TimeSig
  has_program: jax.Array  # 1 once a Program came in this bar
  has_tempo: jax.Array  # 1 once any Tempo came
  bars: jax.Array  # Bar tokens so far


@flax.struct.dataclass
class TokenGrammar:
  """Which tokens may come next; a pytree whose leaves are data (see the module docstring)."""

  kind_V: jax.Array  # int32 index into KINDS per token
  value_V: jax.Array  # int32: position, bar steps of a TimeSig, program (drums = 128), ...
  program: jax.Array  # int32 scalar: the only Program token allowed, -1 for any
  min_bars: jax.Array  # int32 scalar: EOS is not allowed before this many Bar tokens

  def start(self) -> State:
    """State before any token."""
    return State(*(jnp.int32(x) for x in (START, -1, 0, 0, 0, 0)))

  def init(self, prompt_P: jax.Array) -> State:
    """State after a prompt (its tokens are checked by the grammar, not the forced program)."""
    return jax.lax.scan(lambda s, t: (self.advance(s, t), None), self.start(),
                        jnp.asarray(prompt_P, jnp.int32))[0]

  def allowed(self, state: State) -> jax.Array:
    """bool[V]: the tokens the grammar (and the forced program) allow next."""
    forced = (self.kind_V != PROGRAM) | (self.program < 0) | (self.value_V == self.program)
    long_enough = (self.kind_V != EOS) | (state.bars >= self.min_bars)
    return _grammar_ok(state, self.kind_V, self.value_V) & forced & long_enough

  def logits(self, state: State, logits_V: jax.Array) -> jax.Array:
    """Logits to sample from: -inf where not allowed; a forced program takes the logsumexp of
    every Program token's logit (see the module docstring)."""
    is_program = self.kind_V == PROGRAM
    pooled = jax.nn.logsumexp(jnp.where(is_program, logits_V, -jnp.inf))
    logits_V = jnp.where(is_program & (self.value_V == self.program), pooled, logits_V)
    return jnp.where(self.allowed(state), logits_V, -jnp.inf)

  def advance(self, state: State, token: jax.Array) -> State:
    """State after one more token; DEAD if the grammar does not allow it."""
    in_vocab = (token >= 0) & (token < self.kind_V.shape[0])
    kind, value = self.kind_V[token], self.value_V[token]
    ok = in_vocab & _grammar_ok(state, kind, value)
    bar = kind == BAR
    return State(
        phase=jnp.where(ok, jnp.asarray(_NEXT_PHASE)[kind], DEAD),
        position=jnp.where(kind == POSITION, value, jnp.where(bar, -1, state.position)),
        bar_steps=jnp.where(kind == TIMESIG, value, state.bar_steps),
        has_program=jnp.where(kind == PROGRAM, 1, jnp.where(bar, 0, state.has_program)),
        has_tempo=jnp.where(kind == TEMPO, 1, state.has_tempo),
        bars=state.bars + bar.astype(jnp.int32))


def _grammar_ok(state: State, kind: jax.Array, value: jax.Array) -> jax.Array:
  """Whether tokens of `kind` and `value` (any broadcastable shape) may follow `state`."""
  phase = state.phase
  in_bar = (phase == IN_BAR) | (phase == AFTER_POSITION)
  open_ = in_bar | (phase == START) | (phase == NO_BAR)  # no note or bar header unfinished
  by_kind = jnp.stack([
      phase == ENDED,  # PAD
      phase == START,  # BOS
      open_,  # EOS
      open_,  # Bar
      phase == AFTER_BAR,  # TimeSig
      in_bar,  # Position, and below its value check
      phase == AFTER_POSITION,  # Tempo
      in_bar & (state.position >= 0),  # Program
      in_bar & (state.has_program == 1) & (state.has_tempo == 1),  # Pitch
      phase == AFTER_PITCH,  # Velocity
      phase == AFTER_VELOCITY,  # Duration
  ])
  ascending = (kind != POSITION) | ((value > state.position) & (value < state.bar_steps))
  return by_kind[kind] & ascending


def build(tokenizer: midi_tokenizer.MidiTokenizer, program: int | None = None,
          min_bars: int = 0) -> TokenGrammar:
  """The grammar of a tokenizer's vocabulary; `program` (0..127, 128 drums) forces the Program,
  and EOS waits for `min_bars` Bar tokens."""
  kinds, values = [], []
  for name in tokenizer.tokens:
    kind, _, value = name.partition("_")
    if kind not in KINDS:
      raise ValueError(f"token {name!r} has kind {kind!r}, not one of the grammar's {KINDS}")
    kinds.append(KINDS.index(kind))
    if kind == "TimeSig":
      values.append(tokenizer.bar_steps(*(int(x) for x in value.split("/"))))
    elif value == "drums":
      values.append(midi_tokenizer.DRUM_PROGRAM)
    else:
      values.append(int(value) if value else 0)
  if program is not None and not 0 <= program <= midi_tokenizer.DRUM_PROGRAM:
    raise ValueError(f"program {program} is not within 0..127 or {midi_tokenizer.DRUM_PROGRAM} "
                     f"(drums)")
  if min_bars < 0:
    raise ValueError(f"min_bars {min_bars} is negative")
  return TokenGrammar(jnp.asarray(kinds, jnp.int32), jnp.asarray(values, jnp.int32),
                      jnp.int32(-1 if program is None else program), jnp.int32(min_bars))


def parse_program(text: str) -> int | None:
  """A --program value: '' keeps the model's choice, 'drums' is 128, else a GM program 0..127."""
  if not text:
    return None
  if text == "drums":
    return midi_tokenizer.DRUM_PROGRAM
  try:
    program = int(text)
  except ValueError:
    program = -1
  if not 0 <= program <= 127:
    raise ValueError(f"--program {text!r} is not a General MIDI program 0..127 or 'drums'")
  return program
