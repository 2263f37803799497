"""Mesh construction and partition rules: every error carries its numbers."""

import jax
import optax
import pytest
from jax.sharding import PartitionSpec as P

from lora_jax import lora
from lora_jax.families import music_lm
from lora_jax.train import mesh as mesh_lib
from lora_jax.train import state as state_lib
from lora_jax.train.config import MeshConfig

LM = music_lm.LmConfig(vocab_size=32, d_model=32, n_heads=4, n_layers=1, d_ff=64, max_len=32,
                       dropout=0.0, seq_len=16)


def abstract():
  return state_lib.abstract_base(music_lm.make(LM, "float32"))


def test_axis_sizes_resolve_minus_one():
  assert mesh_lib.axis_sizes(MeshConfig(-1, 2, 1), 8) == (4, 2, 1)
  assert mesh_lib.axis_sizes(MeshConfig(2, 1, -1), 8) == (2, 1, 4)
  with pytest.raises(mesh_lib.ShardingError, match=r"needs 6 devices, there are 8"):
    mesh_lib.axis_sizes(MeshConfig(3, 2, 1), 8)
  with pytest.raises(mesh_lib.ShardingError, match=r"fixed size 3 do not divide 8 devices"):
    mesh_lib.axis_sizes(MeshConfig(-1, 3, 1), 8)
  with pytest.raises(mesh_lib.ShardingError, match=r"at most one is -1"):
    mesh_lib.axis_sizes(MeshConfig(-1, -1, 1), 8)


def test_mesh_and_batch_size():
  mesh = mesh_lib.make_mesh(MeshConfig(4, 2, 1))
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "model": 1}
  assert mesh_lib.data_parallel_size(mesh) == 8
  mesh_lib.check_batch_size(16, mesh, "batch size")
  with pytest.raises(mesh_lib.ShardingError,
                     match=r"batch size 12 is not divisible by 8 data-parallel devices "
                           r"\(data 4 x fsdp 2\)"):
    mesh_lib.check_batch_size(12, mesh, "batch size")
  assert mesh_lib.batch_sharding(mesh, leading=1).spec == P(None, ("data", "fsdp"))


def test_family_rules_shard_every_parameter_and_lora_follows():
  mesh = mesh_lib.make_mesh(MeshConfig(2, 1, 4))
  tree = abstract()
  shardings = mesh_lib.param_shardings(music_lm.PARTITION_RULES, tree, mesh)
  specs = {k: s.spec for k, s in zip(
      [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]],
      jax.tree.leaves(shardings))}
  assert specs["['blocks_0']['attn']['q_proj']['kernel']"] == P("fsdp", "model")
  assert specs["['blocks_0']['ff']['out']['kernel']"] == P("model", "fsdp")
  assert specs["['blocks_0']['ln1']['scale']"] == P()
  targets = lora.resolve(lora.LoraSpec(target_modules=("q_proj", "ff.out")), tree)
  lora_sh = lora.shardings(targets, shardings)
  q = lora_sh["blocks_0"]["attn"]["q_proj"]
  assert q["lora_A"].spec == P("fsdp", None) and q["lora_B"].spec == P(None, "model")


def test_rule_errors_name_the_problem():
  tree = abstract()
  shape = {"data": 1, "fsdp": 2, "model": 4}
  with pytest.raises(mesh_lib.ShardingError, match=r"rules \['nothing\\\\.here'\] match no "
                                                   r"parameter"):
    mesh_lib.partition_specs(((r"nothing\.here", P()),) + music_lm.PARTITION_RULES, tree, shape)
  with pytest.raises(mesh_lib.ShardingError, match=r"match no partition rule"):
    mesh_lib.partition_specs(((r"kernel$", P()),), tree, shape)
  with pytest.raises(mesh_lib.ShardingError,
                     match=r"blocks.0.attn.k_proj.kernel dim 1 of size 32 is not divisible by "
                           r"mesh axis model of size 3"):
    mesh_lib.partition_specs(music_lm.PARTITION_RULES, tree, {"data": 1, "fsdp": 2, "model": 3})
  with pytest.raises(mesh_lib.ShardingError, match=r"names mesh axes \['tensor'\]"):
    mesh_lib.partition_specs(((r"kernel$", P(None, "tensor")), (".*", P())), tree, shape)


def test_optimizer_state_shardings_follow_the_params():
  mesh = mesh_lib.make_mesh(MeshConfig(2, 1, 4))
  tree = abstract()
  targets = lora.resolve(lora.LoraSpec(target_modules=("q_proj",)), tree)
  params = lora.abstract_params(targets)
  param_sh = lora.shardings(targets, mesh_lib.param_shardings(music_lm.PARTITION_RULES, tree,
                                                              mesh))
  opt = jax.eval_shape(optax.adamw(1e-3).init, params)
  opt_sh = mesh_lib.like_params(opt, params, param_sh, mesh)
  mu = opt_sh[0].mu["blocks_0"]["attn"]["q_proj"]["lora_B"]
  assert mu.spec == P(None, "model") and opt_sh[0].count.spec == P()
