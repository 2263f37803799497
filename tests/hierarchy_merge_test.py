"""Decode parity, merged == unmerged, and the compatibility checks, through the hierarchy's files.

Adapters here have random A and B (with B = 0 every parity and merge test passes trivially) and
are written as the trainers write them: `.lora` files with their level, a child with its parent's
name, path and fingerprint.
"""

import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from lora_jax import lora
from lora_jax.data import midi_tokenizer as mt
from lora_jax.hierarchy import base_file, evaluation, generation, merging, settings
from lora_jax.models import decode
from lora_jax.models.transformer import MusicTransformer
from third_party.music_transformer_torch import MusicTransformer as TorchMusicTransformer
import testlib

TOKENIZER = mt.MidiTokenizer(mt.MidiTokenizerConfig())
SIZE = settings.ModelSettings(vocab_size=TOKENIZER.vocab_size, d_model=32, n_heads=4, n_layers=2,
                              d_ff=48, max_len=48, dropout=0.0)
PARENT_SPEC = lora.LoraSpec(rank=4, alpha=8.0, target_modules=settings.expand_targets(
    ("attention", "feed_forward", "output_projection")))
CHILD_SPEC = lora.LoraSpec(rank=2, alpha=4.0, target_modules=settings.expand_targets(
    ("attention",)))


def write_base(folder, seed: int) -> str:
  model = MusicTransformer(base_file.BaseModel("", SIZE, None, "", {}).transformer_config())
  params = model.init(jax.random.key(seed), jnp.zeros((1, 8), jnp.int32))["params"]
  path = os.path.join(folder, "base_model.safetensors")
  base_file.save_model(path, base_file.host(params), SIZE, {"test": True})
  TOKENIZER.save_vocab(str(folder))
  return path


def write_adapter(path, base: base_file.BaseModel, spec, seed, name, extra) -> str:
  adapter = testlib.random_adapter(base.params, spec, seed, std=0.2)
  lora.save_adapter(str(path), lora.AdapterRecord(adapter, spec, base.fingerprint, "music_lm",
                                                  name, extra))
  return str(path)


def write_child(path, base, parent_path, seed=2, name="folk/waltz") -> str:
  parent = lora.load_adapter(parent_path)
  link = {"name": parent.name, "path": parent_path,
          "fingerprint": lora.fingerprint(parent.adapter.params),
          "base_fingerprint": parent.base_fingerprint}
  return write_adapter(path, base, CHILD_SPEC, seed, name, {"level": "child", "parent": link})


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  folder = tmp_path_factory.mktemp("hierarchy")
  base_path = write_base(folder, seed=0)
  base = base_file.load_model(base_path)
  parent = write_adapter(folder / "folk.lora", base, PARENT_SPEC, 1, "folk", {"level": "parent"})
  child = write_child(folder / "waltz.lora", base, parent)
  return {"folder": folder, "base": base_path, "parent": parent, "child": child}


def tokens(batch=2, length=24, seed=3):
  return jax.random.randint(jax.random.key(seed), (batch, length), 0, SIZE.vocab_size)


class ParityTest(chex.TestCase):

  @pytest.fixture(autouse=True)
  def _files(self, files):
    self.files = files

  @chex.variants(with_jit=True, without_jit=True)
  def test_child_weight_zero_gives_the_parents_logits_bit_for_bit(self):
    base, stack = merging.load_stack(self.files["base"], self.files["parent"], self.files["child"])
    merging.check(base, stack)
    parent, child = (a.record.adapter for a in stack)
    model, x = base.model(), tokens()
    fwd = self.variant(lambda acts, w: lora.apply(
        model, base.params, [lora.Active(a, wi) for a, wi in zip(acts, w)], x))
    both = fwd((parent, child), jnp.asarray([1.0, 0.0]))
    alone = fwd((parent,), jnp.asarray([1.0]))
    np.testing.assert_array_equal(np.asarray(both), np.asarray(alone))
    assert np.abs(np.asarray(fwd((parent, child), jnp.asarray([1.0, 1.0])) - alone)).max() > 1e-3


def test_child_weight_zero_decodes_as_the_parent_alone(files):
  base, stack = merging.load_stack(files["base"], files["parent"], files["child"])
  parent, child = (a.record.adapter for a in stack)
  prompt = jnp.asarray([[mt.BOS]] * 2, jnp.int32)
  greedy = lambda adapters, weights: np.asarray(decode.sample(
      base.model(), base.params, prompt, 30, adapters=adapters, weights=weights, temperature=0.0))
  np.testing.assert_array_equal(greedy([parent, child], [1.0, 0.0]), greedy([parent], [1.0]))
  assert not np.array_equal(greedy([parent, child], [1.0, 1.0]), greedy([parent], [1.0]))
  # The same through the generation path: same tokens, same MIDI bytes.
  run = lambda paths, weights, out: generation.generate(
      files["base"], paths, weights, blend_mode="additive", output_dir=str(files["folder"] / out),
      n_samples=2, length=30, temperature=0.0, top_k=0, top_p=1.0, seed=0)
  with_child = run([files["parent"], files["child"]], [1.0, 0.0], "with_child")
  alone = run([files["parent"]], [1.0], "alone")
  for a, b in zip(with_child, alone):
    assert a.n_tokens == b.n_tokens and a.problem == b.problem
    assert open(a.path, "rb").read() == open(b.path, "rb").read()


@pytest.mark.parametrize("mode, weights", [("additive", (1.0, 0.5)), ("interpolative", (1.0, 3.0))])
def test_merged_model_equals_base_with_adapters(files, mode, weights):
  out = files["folder"] / mode / "waltz_model.safetensors"
  merged = merging.merge(files["base"], files["parent"], files["child"], blend_mode=mode,
                         parent_weight=weights[0], child_weight=weights[1], output=str(out),
                         create_config=True, torch_output=str(out).replace(".safetensors", ".pt"))
  effective = np.asarray(lora.blend_weights(mode, weights))
  np.testing.assert_allclose(merged.weights, effective)
  base, stack = merging.load_stack(files["base"], files["parent"], files["child"])
  x = tokens()
  unmerged = lora.apply(base.model(), base.params, [
      lora.Active(a.record.adapter, w) for a, w in zip(stack, effective)], x)
  model = base_file.load_model(merged.path)
  got = model.model().apply({"params": model.params}, x)
  np.testing.assert_allclose(np.asarray(got), np.asarray(unmerged), atol=2e-5)
  assert np.abs(np.asarray(got) - np.asarray(base.model().apply({"params": base.params}, x))
                ).max() > 1e-3

  # The held-out NLL of both is the same number.
  arrays = {"tokens": np.asarray(tokens(5, 24, seed=4)), "mask": np.ones((5, 24), np.float32)}
  a = evaluation.nll(base.model(), base.params, arrays, [s.record.adapter for s in stack],
                     list(effective))
  b = evaluation.nll(model.model(), model.params, arrays)
  assert abs(a.bits_per_token - b.bits_per_token) < 1e-5 and a.n_tokens == b.n_tokens == 5 * 23

  # Beside it: the vocabulary, the inference config, and a PyTorch file with the same logits.
  assert os.path.isfile(out.parent / "vocab.json")
  config = json.loads(open(merged.config_path).read())
  assert config["model"] == "waltz_model.safetensors"
  assert config["fingerprint"] == merged.fingerprint
  assert [a["role"] for a in config["merged_from"]["adapters"]] == ["parent", "child"]
  assert merging.read_inference_config(merged.config_path) == str(out)
  torch_model = TorchMusicTransformer(model.transformer_config(dropout=0.0)).eval()
  torch_model.load_state_dict(torch.load(merged.torch_path, weights_only=True))
  with torch.no_grad():
    torch_logits = torch_model(torch.from_numpy(np.array(x))).numpy()
  np.testing.assert_allclose(torch_logits, np.asarray(got), atol=1e-4)


def test_masked_positions_and_padding_do_not_count(files):
  base = base_file.load_model(files["base"])
  x = np.asarray(tokens(3, 24, seed=5))
  mask = np.ones((3, 24), np.float32)
  mask[1, 10:] = 0
  full = evaluation.nll(base.model(), base.params, {"tokens": x, "mask": mask})
  assert full.n_tokens == 23 + 9 + 23
  logits = base.model().apply({"params": base.params}, x)
  logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
  ce = -np.take_along_axis(np.asarray(logp), x[:, 1:, None], axis=-1)[..., 0]
  want = (ce * mask[:, 1:]).sum() / mask[:, 1:].sum() / np.log(2)
  assert abs(full.bits_per_token - want) < 1e-5


def test_compatibility_checks(files, tmp_path):
  other_base = write_base(tmp_path / "other", seed=7)
  with pytest.raises(lora.IncompatibleAdapterError, match=r"was trained on base \w+, but .* is "
                                                          r"base \w+ \(wrong base\?\)"):
    merging.check(*merging.load_stack(other_base, files["parent"], None))
  with pytest.raises(lora.IncompatibleAdapterError, match=r"trained over parent folk .*; pass that "
                                                          r"parent too"):
    merging.check(*merging.load_stack(files["base"], None, files["child"]))
  base = base_file.load_model(files["base"])
  stranger = write_adapter(tmp_path / "folk2.lora", base, PARENT_SPEC, 9, "folk",
                           {"level": "parent"})
  with pytest.raises(lora.IncompatibleAdapterError, match=r"over parent folk with fingerprint "
                                                          r"\w+, but .*folk2.lora has fingerprint"):
    merging.check(*merging.load_stack(files["base"], stranger, files["child"]))
  with pytest.raises(lora.IncompatibleAdapterError, match="records no parent"):
    merging.check(*merging.load_stack(files["base"], files["parent"], files["parent"]))
  with pytest.raises(lora.IncompatibleAdapterError, match="is a child adapter"):
    merging.check(*merging.load_stack(files["base"], files["child"], None))
  with pytest.raises(ValueError, match=r"must end in \.safetensors"):
    merging.merge(files["base"], files["parent"], None, blend_mode="additive", parent_weight=1.0,
                  child_weight=1.0, output=str(tmp_path / "x.pt"), create_config=False)
  report = merging.check(*merging.load_stack(files["base"], files["parent"], files["child"]))
  assert report[-1] == "adapters stack: ok" and any("over parent folk" in r for r in report)


def test_sampled_rows_become_midi_by_the_tokenizers_rules():
  ids = TOKENIZER.ids
  bar = [ids["Bar"], ids["TimeSig_4/4"], ids["Position_0"], ids["Tempo_10"], ids["Program_40"],
         ids["Pitch_60"], ids["Velocity_10"], ids["Duration_12"]]
  pm, used, ended, problem = generation.to_midi(TOKENIZER, [mt.BOS] + bar + [mt.EOS, 7, 9])
  assert ended and used == 10 and problem == "" and len(pm.instruments[0].notes) == 1
  pm, used, ended, problem = generation.to_midi(TOKENIZER, [mt.BOS] + bar + bar[:6])
  assert not ended and used == 15 and problem == "" and len(pm.instruments[0].notes) == 1
  broken = [mt.BOS] + bar + [ids["Position_12"], ids["Duration_3"]] + bar
  pm, used, ended, problem = generation.to_midi(TOKENIZER, broken)
  assert used == 10 and "token 10 (Duration_3)" in problem and "kept the first 10 of 19" in problem
  assert len(pm.instruments[0].notes) == 1
