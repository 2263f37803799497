"""--min_bars: the grammar holds EOS back until that many Bar tokens, then lets the model end."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lora_jax.data import midi_tokenizer as mt
from lora_jax.data import token_grammar
from lora_jax.models import decode
import testlib
from token_grammar_test import SIZE, TOK, check_rows, kind_balanced


def eos_loving():
  """A tiny random model that puts most of its mass on EOS whenever it may end."""
  small, params = testlib.tiny_model(SIZE)
  params = kind_balanced(params)
  bias = np.asarray(params["head"]["bias"]).copy()
  bias[mt.EOS] += 12.0
  return small, {**params, "head": {**params["head"], "bias": jnp.asarray(bias)}}


def bars_before_eos(row) -> int:
  row = list(np.asarray(row))
  end = row.index(mt.EOS) if mt.EOS in row else len(row)
  return row[:end].count(TOK.ids["Bar"])


def test_min_bars_holds_eos_back():
  model = eos_loving()
  prompt = jnp.full((8, 1), mt.BOS, jnp.int32)
  free = np.asarray(decode.sample(*model, prompt, 95, rng=jax.random.key(0),
                                  constraint=token_grammar.build(TOK)))
  assert all(mt.EOS in list(r) and bars_before_eos(r) < 2 for r in free)  # ends at once
  held = np.asarray(decode.sample(*model, prompt, 95, rng=jax.random.key(0),
                                  constraint=token_grammar.build(TOK, min_bars=3)))
  check_rows(held)
  for row in held:
    assert bars_before_eos(row) >= 3
    assert mt.EOS in list(row)  # and it still ends, where it may
  # The prompt's bars count: a prompt of 3 bars may end at once.
  grammar = token_grammar.build(TOK, min_bars=3)
  state = grammar.init(jnp.asarray([mt.BOS] + [TOK.ids["Bar"], TOK.ids["TimeSig_4/4"]] * 3))
  assert bool(grammar.allowed(state)[mt.EOS])
  state = grammar.init(jnp.asarray([mt.BOS] + [TOK.ids["Bar"], TOK.ids["TimeSig_4/4"]] * 2))
  assert not bool(grammar.allowed(state)[mt.EOS])


def test_min_bars_is_data_and_checked():
  with pytest.raises(ValueError, match="min_bars -1 is negative"):
    token_grammar.build(TOK, min_bars=-1)
  a, b = token_grammar.build(TOK, min_bars=2), token_grammar.build(TOK, min_bars=9)
  assert jax.tree.structure(a) == jax.tree.structure(b)  # one compilation for any minimum
