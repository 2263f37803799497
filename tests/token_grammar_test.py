"""The grammar constraint: it allows exactly what MidiTokenizer._parse accepts, and sampling with it
(random logits, many seeds) always decodes; the forced program holds; None changes nothing."""

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lora_jax.data import midi_tokenizer as mt
from lora_jax.data import token_grammar
from lora_jax.hierarchy import base_file, generation, settings
from lora_jax.models import decode
from lora_jax.models.transformer import TransformerConfig
from midi_tokenizer_test import edge_case_midi, real_pieces  # pylint: disable=unused-import
import testlib

TOK = mt.MidiTokenizer(mt.MidiTokenizerConfig())
GRAMMAR = token_grammar.build(TOK)
# A random tiny model over the real vocabulary (see `model`).
SIZE = TransformerConfig(vocab_size=TOK.vocab_size, d_model=32, n_heads=4, n_layers=2, d_ff=48,
                         max_len=96, dropout=0.0)


def parses(tokens, truncated: bool) -> bool:
  try:
    TOK._parse(list(tokens), truncated)  # pylint: disable=protected-access
    return True
  except mt.TokenSequenceError:
    return False


@jax.jit
def _walk(grammar, tokens_T):
  """Per token: was it allowed when it came; and the mask after each prefix (row 0: none)."""
  def step(state, token):
    mask_V = grammar.allowed(state)
    return grammar.advance(state, token), (mask_V[token], mask_V)
  state, (allowed_T, masks_TxV) = jax.lax.scan(step, grammar.start(), tokens_T)
  return allowed_T, jnp.concatenate([masks_TxV, grammar.allowed(state)[None]])


def walk(tokens, grammar=GRAMMAR) -> tuple[np.ndarray, np.ndarray]:
  """(allowed_T, masks_(T+1)xV) of a sequence, padded to a power of two so few lengths compile."""
  n = len(tokens)
  padded = np.zeros(64 << max(0, (n - 1) // 64).bit_length(), np.int32)
  padded[:n] = tokens
  allowed_T, masks = _walk(grammar, jnp.asarray(padded))
  return np.asarray(allowed_T)[:n], np.asarray(masks)[:n + 1]


@jax.jit
def _step(grammar, state, token):
  state = grammar.advance(state, token)
  return state, grammar.allowed(state)


def random_valid(rng: np.random.Generator, length: int) -> list[int]:
  """A sequence the grammar allows, picking a kind of token uniformly, then a token of it."""
  kind_V = np.asarray(GRAMMAR.kind_V)
  tokens, state, mask = [], GRAMMAR.start(), np.asarray(GRAMMAR.allowed(GRAMMAR.start()))
  for _ in range(length):
    kind = rng.choice(np.unique(kind_V[mask]))
    tokens.append(int(rng.choice(np.flatnonzero(mask & (kind_V == kind)))))
    state, mask = _step(GRAMMAR, state, tokens[-1])
    mask = np.asarray(mask)
  return tokens


def test_every_real_piece_is_allowed_token_by_token(real_pieces):
  pieces = {"edge cases": edge_case_midi(TOK), **real_pieces}
  for name, pm in pieces.items():
    tokens = TOK.encode(pm)
    allowed_T, masks = walk(tokens)
    assert allowed_T.all(), (name, [TOK.tokens[t] for t in np.asarray(tokens)[~allowed_T]])
    np.testing.assert_array_equal(np.flatnonzero(masks[-1]), [mt.PAD])  # after EOS only PAD
    # A window opened at a later bar (as training windows are) is allowed too.
    bars = [i for i, t in enumerate(tokens) if t == TOK.ids["Bar"]]
    assert walk([mt.BOS] + tokens[bars[len(bars) // 2]:])[0].all(), name


def test_mask_is_exactly_the_extensions_parse_accepts():
  """At every prefix of random valid sequences, for every token of the vocabulary."""
  rng = np.random.default_rng(0)
  n_ended, kinds = 0, set()
  for _ in range(6):
    tokens = random_valid(rng, 60)
    kinds |= {TOK.tokens[t].split("_")[0] for t in tokens}
    masks = walk(tokens)[1]
    for n, mask in enumerate(masks):
      want = [parses(tokens[:n] + [v], truncated=True) for v in range(TOK.vocab_size)]
      bad = np.flatnonzero(mask != np.asarray(want))
      assert not bad.size, ([TOK.tokens[t] for t in tokens[:n][-4:]],
                            [(TOK.tokens[v], bool(mask[v])) for v in bad[:5]])
    n_ended += mt.EOS in tokens
  assert n_ended >= 1 and kinds == set(token_grammar.KINDS)


HEAD = "BOS Bar TimeSig_3/4 Position_0"
NOTE = "Pitch_60 Velocity_9 Duration_6"


@pytest.mark.parametrize("names, valid", [
    (f"{HEAD} Tempo_3 Program_0 {NOTE} EOS PAD PAD", True),
    (f"{HEAD} Program_0 {NOTE}", False),  # no Tempo before the first note
    (f"{HEAD} Tempo_3 Bar TimeSig_3/4 Position_4 Program_0 {NOTE}", True),  # any earlier Tempo
    (f"{HEAD} Tempo_3 Tempo_4", False),  # one Tempo per Position
    (f"{HEAD} Tempo_3 Program_0 {NOTE} Tempo_4", False),  # a Tempo only right after a Position
    (f"{HEAD} Tempo_3 Program_0 {NOTE} Bar TimeSig_3/4 Position_0 {NOTE}", False),  # per bar
    (f"{HEAD} Tempo_3 Program_5 Program_drums Position_9 Bar TimeSig_6/8", True),
    ("BOS Bar TimeSig_3/4 Program_0", False),  # Program before any Position of its bar
    (f"{HEAD} Position_0", False),  # strictly ascending
    (f"{HEAD} Position_35", True),  # 3/4: 36 steps
    (f"{HEAD} Position_36", False),
    ("BOS Bar TimeSig_4/1 Position_95", True),  # 4/1: two parts of 96 steps
    ("BOS Bar TimeSig_12/8 Position_71", True),
    ("BOS Bar TimeSig_12/8 Position_72", False),
    ("BOS Bar EOS", False), ("BOS Bar Bar", False), ("BOS TimeSig_3/4", False),
    (f"{HEAD} Tempo_3 Program_0 Pitch_60 Velocity_9 EOS", False),
    (f"{HEAD} Tempo_3 Program_0 Pitch_60 Duration_6", False),
    (f"{HEAD} Tempo_3 Program_0 {NOTE} Velocity_9", False),
    ("BOS EOS", True), ("EOS", True), ("Bar TimeSig_3/4 Position_2", True), ("BOS BOS", False),
    ("BOS PAD", False), ("BOS EOS Bar", False), ("BOS Position_0", False),
])
def test_grammar_rules(names, valid):
  tokens = [TOK.ids[n] for n in names.split()]
  assert parses(tokens, truncated=False) == valid  # the table states _parse's rules
  allowed_T, masks = walk(tokens)
  assert (allowed_T.all() and (masks[-1, mt.EOS] or masks[-1, mt.PAD])) == valid


@pytest.mark.parametrize("seed", range(4))
def test_allowed_everywhere_iff_parse_accepts_on_mutated_pieces(seed):
  """Broken sequences too: the walk rejects exactly what _parse rejects, both ways of ending."""
  rng = np.random.default_rng(seed)
  base = TOK.encode(edge_case_midi(TOK))
  n_rejected = 0
  for _ in range(60):
    tokens = list(base[:rng.integers(1, len(base) + 1)])
    for _ in range(rng.integers(0, 3)):
      i = int(rng.integers(0, len(tokens) + 1))
      new = int(rng.integers(0, TOK.vocab_size))
      edit = rng.integers(0, 3)
      if edit == 0 and i < len(tokens):
        tokens[i] = new
      elif edit == 1:
        tokens.insert(i, new)
      elif i < len(tokens):
        del tokens[i]
    allowed_T, masks = walk(tokens)
    complete = masks[-1, mt.EOS] or masks[-1, mt.PAD]  # nothing left open, or ended
    assert allowed_T.all() == parses(tokens, truncated=True), [TOK.tokens[t] for t in tokens]
    assert (allowed_T.all() and complete) == parses(tokens, truncated=False)
    n_rejected += not allowed_T.all()
  assert 10 < n_rejected < 60  # both kinds of sequence were tried


def kind_balanced(params):
  """Random params whose output bias gives each kind of token about equal mass (EOS less), so
  sampling wanders over the whole grammar instead of mostly picking among 96 Positions."""
  kind_V = np.asarray(GRAMMAR.kind_V)
  bias_V = -np.log(np.bincount(kind_V)[kind_V])
  bias_V[mt.EOS] -= 4.5
  return {**params, "head": {**params["head"], "bias": jnp.asarray(bias_V, jnp.float32)}}


@pytest.fixture(scope="module")
def model():
  small, params = testlib.tiny_model(SIZE)
  return small, kind_balanced(params)


def check_rows(rows, prompt_len: int = 1, program: int | None = None) -> int:
  """Every row decodes in full; returns how many sampled Program tokens there were."""
  n_programs = 0
  for row in np.asarray(rows):
    TOK.decode(row, truncated=True)  # the whole row: PAD only after EOS
    pm, used, ended, problem = generation.to_midi(TOK, row)
    assert problem == "" and used == (list(row).index(mt.EOS) + 1 if ended else len(row))
    programs = [TOK.tokens[t] for t in row[prompt_len:] if TOK.tokens[t].startswith("Program")]
    if program is not None:
      name = "drums" if program == mt.DRUM_PROGRAM else program
      assert set(programs) <= {f"Program_{name}"}, programs
    n_programs += len(programs)
  return n_programs


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, 0, 1.0), (3.0, 0, 1.0),
                                                       (0.8, 40, 0.9), (0.0, 0, 1.0)])
def test_constrained_sampling_always_decodes(model, temperature, top_k, top_p):
  prompt = jnp.full((16, 1), mt.BOS, jnp.int32)
  for seed in range(3):
    rows = decode.sample(*model, prompt, 95, rng=jax.random.key(seed), temperature=temperature,
                         top_k=top_k, top_p=top_p, constraint=GRAMMAR)
    check_rows(rows)


def test_unconstrained_sampling_breaks_the_grammar(model):
  """What the constraint prevents: with the same model and seed, free samples do not decode."""
  rows = np.asarray(decode.sample(*model, jnp.full((16, 1), mt.BOS, jnp.int32), 95,
                                  rng=jax.random.key(0)))
  broken = sum(not parses(r[:list(r).index(mt.EOS) + 1] if mt.EOS in r else r, True) for r in rows)
  assert broken >= 12


@pytest.mark.parametrize("program", [40, mt.DRUM_PROGRAM])
def test_forced_program_holds(model, program):
  grammar = token_grammar.build(TOK, program)
  name = "drums" if program == mt.DRUM_PROGRAM else program
  rows = decode.sample(*model, jnp.full((16, 1), mt.BOS, jnp.int32), 95,
                       rng=jax.random.key(1), constraint=grammar)
  assert check_rows(rows, program=program) > 10
  # The forced token carries the mass of every Program token; the rest is only masked.
  state = grammar.init(jnp.asarray(TOK.encode(edge_case_midi(TOK))[:4], jnp.int32))
  logits_V = jax.random.normal(jax.random.key(2), (TOK.vocab_size,))
  out = np.asarray(grammar.logits(state, logits_V))
  programs = np.asarray(grammar.kind_V) == token_grammar.PROGRAM
  forced = TOK.ids[f"Program_{name}"]
  np.testing.assert_allclose(out[forced], jax.nn.logsumexp(logits_V[programs]), rtol=1e-6)
  allowed = np.asarray(grammar.allowed(state))
  assert allowed[forced] and np.isneginf(out[~allowed]).all()
  others = allowed & ~programs
  np.testing.assert_array_equal(out[others], np.asarray(logits_V)[others])


def test_primer_prompt_continues_within_its_bar(model):
  """A prompt cut mid-bar: its state comes from advance, so positions go on ascending."""
  tokens = TOK.encode(edge_case_midi(TOK))
  cut = tokens.index(TOK.ids["Pitch_72"])  # after the Position of a note late in bar 1
  prompt = jnp.asarray([tokens[:cut]] * 8, jnp.int32)
  rows = decode.sample(*model, prompt, 96 - cut, rng=jax.random.key(3), temperature=2.0,
                       constraint=token_grammar.build(TOK, 0))  # the primer keeps its programs
  check_rows(rows, prompt_len=cut, program=0)
  np.testing.assert_array_equal(np.asarray(rows)[:, :cut], prompt)


def test_a_prompt_that_breaks_the_grammar_is_an_error(model):
  prompt = jnp.asarray([[mt.BOS, TOK.ids["Bar"]], [mt.BOS, TOK.ids["Pitch_60"]]], jnp.int32)
  with pytest.raises(ValueError, match=r"allows no token after prompt rows \[1\]"):
    decode.sample(*model, prompt, 4, constraint=GRAMMAR)
  small, params = testlib.tiny_model()
  with pytest.raises(ValueError, match="masks 561 tokens but the model has a vocabulary of 40"):
    decode.sample(small, params, prompt[:1], 4, constraint=GRAMMAR)


@flax.struct.dataclass
class AllowAll:
  """A constraint that allows every token, with a state that counts them."""
  vocab_size: int = flax.struct.field(pytree_node=False)

  def init(self, prompt_P):
    return jnp.int32(prompt_P.shape[0])

  def allowed(self, state):
    return jnp.ones((self.vocab_size,), bool)

  def logits(self, state, logits_V):
    return jnp.where(self.allowed(state), logits_V, -jnp.inf)

  def advance(self, state, token):
    return state + 1


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, 0, 1.0), (0.8, 5, 0.9), (0.0, 0, 1.0)])
def test_masking_nothing_samples_as_no_constraint(temperature, top_k, top_p):
  """None takes the unmasked path (compiled HLO identical to before the constraint existed, as
  checked when it was added); a mask of all True draws the very same tokens."""
  small, params = testlib.tiny_model()
  prompt = testlib.tokens(4, 3)
  kwargs = dict(rng=jax.random.key(5), temperature=temperature, top_k=top_k, top_p=top_p)
  free = decode.sample(small, params, prompt, 12, **kwargs)
  np.testing.assert_array_equal(
      free, decode.sample(small, params, prompt, 12, constraint=AllowAll(40), **kwargs))


def test_one_compilation_for_any_forced_program(model):
  prompt = jnp.full((2, 1), mt.BOS, jnp.int32)
  decode.sample(*model, prompt, 8, constraint=GRAMMAR)
  compiled = decode._sample._cache_size()  # pylint: disable=protected-access
  for program in (0, 40, mt.DRUM_PROGRAM):
    decode.sample(*model, prompt, 8, constraint=token_grammar.build(TOK, program))
  assert decode._sample._cache_size() == compiled  # pylint: disable=protected-access


def test_parse_program():
  assert token_grammar.parse_program("") is None
  assert token_grammar.parse_program("drums") == mt.DRUM_PROGRAM
  assert token_grammar.parse_program("73") == 73
  for bad in ("128", "-1", "piano"):
    with pytest.raises(ValueError, match="is not a General MIDI program 0..127 or 'drums'"):
      token_grammar.parse_program(bad)
  with pytest.raises(ValueError, match="program 129 is not within"):
    token_grammar.build(TOK, 129)


def test_generation_decodes_every_sample_and_reports_the_program(tmp_path):
  size = settings.ModelSettings(vocab_size=TOK.vocab_size, d_model=32, n_heads=4, n_layers=2,
                                d_ff=48, max_len=96, dropout=0.0)
  _, params = testlib.tiny_model(SIZE)
  path = str(tmp_path / "base_model.safetensors")
  base_file.save_model(path, base_file.host(params), size, {})
  TOK.save_vocab(str(tmp_path))
  run = lambda out, **kw: generation.generate(
      path, [], [], blend_mode="additive", output_dir=str(tmp_path / out), n_samples=6,
      length=90, temperature=1.5, top_k=0, top_p=1.0, seed=0, **kw)
  forced = run("forced", program=24)
  assert all(s.problem == "" for s in forced)
  assert all(s.programs in ((), (24,)) for s in forced) and sum(s.n_notes for s in forced) > 0
  free = run("free", grammar=False)
  assert sum(bool(s.problem) for s in free) >= 4  # what the grammar saves
  report = (tmp_path / "forced" / "samples.json").read_text()
  assert '"grammar": true' in report and '"program": 24' in report and '"programs": [' in report
  with pytest.raises(ValueError, match="grammar=False"):
    run("both", program=24, grammar=False)
