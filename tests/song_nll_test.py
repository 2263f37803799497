"""Held-out per-stream NLL of the song LM (lora_jax/song/nll.py) and its unigram baseline."""

import math
import os

import jax
import numpy as np

from lora_jax import lora, tree_paths
from lora_jax.families import song_lm as song_family
from lora_jax.models.song import lm as song_lm
from lora_jax.models.song import loss as song_loss
from lora_jax.song import nll
from lora_jax.train import config as config_lib

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = config_lib.from_mapping(
    song_family.SongConfig,
    config_lib.load_config_dict(os.path.join(_ROOT, "configs", "song_lm.py"), "tiny").model,
    "model")
CONFIG_LORA = lora.LoraSpec(rank=2, alpha=4.0, target_modules=("q_proj", "v_proj"))


def _params():
  rng = np.random.default_rng(0)
  return jax.tree_util.tree_map_with_path(
      lambda p, l: (float(tree_paths.key_name(p[-1]) == "scale")
                    + 0.3 * rng.standard_normal(l.shape)).astype(np.float32),
      song_lm.abstract_params(CONFIG.lm_config("float32")))


def _reference(params, arrays, adapters=()):
  """The training loss's per-stream sums on all windows in one batch (no padding)."""
  model = song_family.make(CONFIG, "float32").model
  out = lora.apply(model, params, [lora.Active(a, 1.0) for a in adapters],
                   *(arrays[k] for k in ("codes", "length", "song_end", "lyrics", "sections",
                                         "style")))
  nats, counts = song_loss.stream_nll(out["logits"], out["codes"], out["mask"], CONFIG.delays)
  return np.asarray(nats), np.asarray(counts)


def test_stream_nll_is_the_training_loss_summed_over_padded_batches():
  arrays = song_family.synthetic(CONFIG, nll.EVAL_BATCH + 3, seed=1)  # the 2nd batch is padded
  params = _params()
  scored = nll.stream_nll(CONFIG, params, arrays)
  nats, counts = _reference(params, arrays)
  np.testing.assert_allclose(scored.nats, nats, rtol=1e-5)
  assert scored.tokens == tuple(int(c) for c in counts)
  assert math.isclose(scored.total_bits_per_token(),
                      nats.sum() / counts.sum() / math.log(2), rel_tol=1e-5)

  targets = lora.resolve(CONFIG_LORA, params)
  adapter = lora.init_adapter(targets, CONFIG_LORA, jax.random.key(3))
  rng = np.random.default_rng(4)  # B = 0 would leave the base's NLL: randomise it
  adapter = lora.Adapter(jax.tree.map(lambda x: 0.5 * rng.standard_normal(x.shape).astype(
      np.float32), adapter.params), adapter.scales)
  adapted = nll.stream_nll(CONFIG, params, arrays, [adapter])
  assert not np.allclose(adapted.nats, scored.nats, rtol=1e-3)
  np.testing.assert_allclose(adapted.nats, _reference(params, arrays, [adapter])[0], rtol=1e-5)


def test_unigram_is_smoothed_code_frequency_of_the_training_targets():
  k, t = CONFIG.code_depth, CONFIG.frames
  train = {"codes": np.zeros((1, k, t), np.int32), "length": np.array([4], np.int32),
           "song_end": np.array([1], np.int32)}
  train["codes"][0, :, :4] = [[1, 1, 1, 2], [3, 3, 3, 3], [5, 6, 7, 8]]
  held = {"codes": np.zeros((1, k, t), np.int32), "length": np.array([2], np.int32),
          "song_end": np.array([0], np.int32)}
  held["codes"][0, :, :2] = [[1, 9], [3, 3], [5, 5]]
  scored = nll.unigram_nll(CONFIG, train, held)
  outcomes = CONFIG.code_size + 1
  total = 5 + outcomes  # four codes and end of sequence are targets of the training song
  # A window cut from its song masks only the delayed streams' last frames: not these two.
  expected = [-math.log(4 / total) - math.log(1 / total),
              -2 * math.log(5 / total),
              -2 * math.log(2 / total)]
  np.testing.assert_allclose(scored.nats, expected, rtol=1e-9)
  assert scored.tokens == (2, 2, 2)
