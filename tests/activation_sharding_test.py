"""FSDP as compiled: the train step gathers weight shards, never the batch's activations."""

import re

import jax
import pytest

from lora_jax.train import batches
from lora_jax.train import mesh as mesh_lib
from tests.train_step_test import build, host_batches, tiny

_RESULT = re.compile(r"= (\(?[^=]*?\)?) (all-gather|all-reduce|reduce-scatter|all-to-all)"
                     r"(?:-start)?\(")
_SHAPE = re.compile(r"(?:bf16|f16|f32|s32|u32|pred)\[([0-9,]*)\]")


def _largest_collective(hlo: str) -> int:
  """Elements of the largest array any collective in `hlo` produces."""
  sizes = [1]
  for result, _ in _RESULT.findall(hlo):
    for dims in _SHAPE.findall(result):
      n = 1
      for d in filter(None, dims.split(",")):
        n *= int(d)
      sizes.append(n)
  return max(sizes)


@pytest.mark.parametrize("training_type", ["lora", "full"])
def test_fsdp_step_moves_weights_not_activations(training_type):
  batch, seq, d, ff = 8, 128, 64, 256
  config = tiny(**{"model.d_model": d, "model.d_ff": ff, "model.seq_len": seq,
                   "model.max_len": seq, "data.batch_size": batch, "training.type": training_type,
                   "lora.target_modules": ("q_proj", "v_proj", "ff.in", "ff.out")})
  built = build(config, jax.devices()[:8], mesh=(1, -1, 1))
  host = batches.micro_batches(host_batches(config, 1)[0], 1)
  sharded = jax.device_put(host, mesh_lib.batch_sharding(built.setup.mesh, leading=1))
  hlo = built.train_fn.lower(built.setup.state, built.setup.frozen, sharded).compile().as_text()
  # The largest weight is ff's kernel (d x ff; with a LoRA factor stacked on it, [d + r, ff]);
  # the smallest activation is [batch, seq, d]. Before the activations were pinned, XLA
  # all-gathered whole [batch, seq, ff] feed-forward activations.
  assert _largest_collective(hlo) <= 2 * d * ff < batch * seq * d
