"""ReLoRA over a quantised base: a reset folds each adapted kernel in float32 into its dequantised
codes and re-quantises it in the base's own format, leaves the other kernels' codes alone, and a
run over an NF4 base on 8 devices stopped right after a reset resumes bit for bit (adapter,
checkpointed quantised base, export)."""

import os
import pathlib

import jax
import numpy as np
import pytest

from lora_jax import families, lora, quant, tree_paths
from lora_jax.interop import flax_weights
from lora_jax.train import batches, checkpoint
from lora_jax.train import config as config_lib
from lora_jax.train import loop
from lora_jax.train import mesh as mesh_lib
from lora_jax.train import relora
from lora_jax.train import state as state_lib
from lora_jax.train import step as step_lib

CONFIG = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "music_lm.py")
# d_model 128: two NF4 blocks along each input, one per fsdp shard.
MODEL = {"model.n_layers": 1, "model.d_model": 128, "model.d_ff": 256,
         "training.relora_every": 4, "training.relora_warmup": 2,
         "lora.target_modules": ("q_proj", "ff.in", "head")}
ADAPTED = ("blocks.0.attn.q_proj.kernel", "blocks.0.ff.in.kernel", "head.kernel")


def qflat(tree) -> dict:
  """{dotted path: leaf}, a quantised kernel kept whole, on the host."""
  flat = tree_paths.flatten(jax.device_get(tree), is_leaf=quant.is_quantized)
  return {tree_paths.dotted(k): v for k, v in flat.items()}


def leaves_equal(a, b) -> bool:
  return all(np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("kind", ["int8", "nf4"])
def test_reset_requantises_the_folded_kernels_only(kind):
  config = config_lib.load(CONFIG, "tiny", {**MODEL, "mesh.data": 1, "training.quantize": kind})
  family = families.lookup("music_lm").make(config.model, "float32")
  mesh = mesh_lib.make_mesh(config.mesh, jax.devices()[:1])
  setup = state_lib.setup(config, family, mesh)
  train_fn = step_lib.jit_train_step(setup.step_config, mesh, setup.state_shardings,
                                     setup.frozen_shardings)
  it = batches.BatchIterator(family.synthetic(4 * config.data.batch_size, 7),
                             config.data.batch_size, seed=3)
  state, frozen = setup.state, setup.frozen
  for _ in range(4):
    batch = batches.micro_batches(next(it)[0], 1)
    state, _ = train_fn(state, frozen, jax.device_put(batch, mesh_lib.batch_sharding(mesh, 1)))
  before, params = qflat(frozen.base), jax.device_get(state.params)
  modules = lora.Adapter(params, jax.device_get(frozen.scales)).modules()
  new_state, new_base = relora.jit_reset(config, setup)(state, frozen.base)
  after = qflat(new_base)
  assert before.keys() == after.keys()
  folded_paths = {tree_paths.dotted(k) + ".kernel" for k in modules}
  assert folded_paths == set(ADAPTED)
  for path, q in after.items():
    if path not in ADAPTED:  # untouched: the same codes and scales
      assert leaves_equal(q, before[path]), path
  for keys, (a, b, s) in modules.items():
    path = tree_paths.dotted(keys) + ".kernel"
    q = after[path]
    assert type(q) is type(before[path]) and quant.is_quantized(q), path
    # deq(W_q) + s A B in float32, quantised by the same numpy quantiser as at the start.
    delta = (np.asarray(a, np.float32) * np.float32(s)) @ np.asarray(b, np.float32)
    folded = np.asarray(quant.dequantize(before[path]), np.float32) + delta
    want = quant.quantize(folded, kind, path)
    assert not leaves_equal(q, before[path]), path
    np.testing.assert_allclose(np.asarray(quant.dequantize(q)),
                               np.asarray(quant.dequantize(want)), rtol=0, atol=1e-6,
                               err_msg=path)
    # Codes may differ only where the device fold's rounding put a value on a level boundary.
    assert np.mean(np.asarray(q.codes) != np.asarray(want.codes)) < 1e-3, path
  # The factors restarted: B zero, as in the float reset.
  for k, v in tree_paths.flatten(jax.device_get(new_state.params)).items():
    if k[-1] == "lora_B":
      assert not np.asarray(v).any(), k


RUN = {**MODEL, "training.steps": 8, "training.eval_every": 4, "ckpt.every_steps": 4,
       "training.log_every": 2, "mesh.data": 4, "mesh.fsdp": 2, "ckpt.export": "final",
       "training.quantize": "nf4"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  config = config_lib.load(CONFIG, "tiny", RUN)
  whole, parts = (str(tmp_path_factory.mktemp(n)) for n in ("whole", "parts"))
  out = {"config": config, "whole": (whole, loop.train(config, whole)),
         "stopped": loop.train(config, parts, stop_after=4)}
  out["resumed"] = (parts, loop.train(config, parts))
  return out


def saved_base(workdir, config, step):
  ckpts = checkpoint.Checkpoints(os.path.join(workdir, "checkpoints"), config.ckpt)
  try:
    return jax.device_get(ckpts.manager.restore(step, args=checkpoint.ocp.args.Composite(
        base=checkpoint.ocp.args.StandardRestore())).base)
  finally:
    ckpts.close()


def test_resume_right_after_a_reset_over_an_nf4_base_is_bit_exact(runs):
  config = runs["config"]
  (whole_dir, whole), (parts_dir, resumed) = runs["whole"], runs["resumed"]
  assert runs["stopped"].status == "stopped" and runs["stopped"].step == 4
  assert whole.status == resumed.status == "finished" and resumed.step == 8
  assert leaves_equal(whole.params, resumed.params)
  assert resumed.val_loss == whole.val_loss
  # The checkpointed base is the quantised one (codes and scales, no float copy), the same in both.
  base_a, base_b = (saved_base(d, config, 8) for d in (whole_dir, parts_dir))
  assert jax.tree.structure(base_a) == jax.tree.structure(base_b)
  assert leaves_equal(base_a, base_b)
  codes = [np.asarray(x) for x in jax.tree.leaves(base_a) if np.asarray(x).dtype == np.uint8]
  assert len(codes) >= 2 * len(ADAPTED)
  family = families.lookup("music_lm").make(config.model, "float32")
  abstract = state_lib.abstract_base(family)
  exports = [flax_weights.load_params(r.export_path, abstract) for r in (whole, resumed)]
  assert leaves_equal(*exports)




def test_the_export_is_the_folded_quantised_base_dequantised_plus_the_last_adapter(runs):
  config = runs["config"]
  workdir, result = runs["whole"]
  family = families.lookup("music_lm").make(config.model, "float32")
  abstract = state_lib.abstract_base(family)
  # Orbax hands the quantised kernels back as dicts of their fields.
  is_kernel = lambda x: isinstance(x, dict) and "absmax_codes" in x
  base = jax.tree.map(lambda x: quant.NF4Kernel(**x) if is_kernel(x) else x,
                      saved_base(workdir, config, 8), is_leaf=is_kernel)
  assert quant.is_quantized_tree(base)
  scales = lora.scales_of(lora.resolve(config.lora, abstract))
  want = tree_paths.flatten(lora.merge(base, [lora.Adapter(result.params, scales)]))
  exported = tree_paths.flatten(flax_weights.load_params(result.export_path, abstract))
  assert want.keys() == exported.keys()
  for k, v in want.items():
    assert exported[k].dtype == np.float32, k
    np.testing.assert_allclose(exported[k], v, rtol=1e-6, atol=1e-7, err_msg=str(k))
  assert result.best_val_loss < 0.95 * 3.4657, result.best_val_loss  # log(32): uniform guess
