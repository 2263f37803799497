"""Peak host memory of export_torch's merge + export, one file against shards, in one run.

    python bench/sharded_export_memory.py --d_model=1024 --n_layers=6

Builds a random float32 music transformer base file of the given size and a random rank-16
adapter on q/k/v/out/ff.in/ff.out, then runs `launch/export_torch.py` twice as child processes:
to one `.safetensors` file (the whole merged model is built on the host, then its state dict,
then the file's bytes) and with `--max_shard_size` over 8 fake CPU devices (the base read
straight into its shards, each device folding its own blocks, one tensor on the host at a time).
Prints each child's peak resident memory (ru_maxrss) against the base's bytes. On fake CPU devices
the devices' memory is the host's, so the sharded child's peak still includes the base once, and
resident memory counts the pages of the base file that safetensors reads through mmap.
"""

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np


# Runs one command and prints its peak RSS (KiB): each measurement in a fresh parent, since a
# process's RUSAGE_CHILDREN maximum spans every child it ever waited for.
_WRAPPER = ("import resource, subprocess, sys\n"
            "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
            "sys.stderr.write(done.stderr[-2000:])\n"
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
            "sys.exit(done.returncode)\n")


def _child_peak(args: list[str], env: dict, status: int = 0) -> float:
  """Peak resident bytes of `args` run as a child process that exits with `status`."""
  done = subprocess.run([sys.executable, "-c", _WRAPPER, *args], env=env, capture_output=True,
                        text=True)
  if done.returncode != status:
    sys.exit(f"sharded_export_memory: {args[-1]} failed:\n{done.stderr}")
  return int(done.stdout.split()[-1]) * 1024.0


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--d_model", type=int, default=1024)
  parser.add_argument("--n_layers", type=int, default=6)
  parser.add_argument("--max_shard_size", default="100MB")
  args = parser.parse_args()
  import jax  # pylint: disable=g-import-not-at-top
  from lora_jax import lora  # pylint: disable=g-import-not-at-top
  from lora_jax.interop import flax_weights, model_size  # pylint: disable=g-import-not-at-top
  from lora_jax.models import transformer  # pylint: disable=g-import-not-at-top

  size = transformer.TransformerConfig(vocab_size=512, d_model=args.d_model, n_heads=16,
                                       n_layers=args.n_layers, d_ff=4 * args.d_model,
                                       max_len=1024, dropout=0.0)
  abstract = transformer.abstract_params(size)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda x: rng.standard_normal(x.shape, np.float32) * 0.02, abstract)
  base_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
  spec = lora.LoraSpec(rank=16, target_modules=("q_proj", "k_proj", "v_proj", "out_proj",
                                                "ff.in", "ff.out"))
  targets = lora.resolve(spec, params)
  adapter = lora.init_adapter(targets, spec, jax.random.key(0))
  adapter = adapter.replace(params=jax.tree.map(
      lambda x: rng.standard_normal(x.shape, np.float32) * 0.02, adapter.params))
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with tempfile.TemporaryDirectory() as tmp:
    base_file, adapter_file = os.path.join(tmp, "base.safetensors"), os.path.join(tmp, "a.lora")
    flax_weights.save_params(params, base_file, model_size.metadata_of(size))
    lora.save_adapter(adapter_file, lora.AdapterRecord(adapter, spec, lora.fingerprint(params),
                                                       "music_lm", "bench"))
    del params, adapter
    launch = [sys.executable, os.path.join(root, "launch", "export_torch.py"),
              f"--input={base_file}", f"--adapters={adapter_file}"]
    # glibc's default allocator in both: the launchers' keep-freed-memory setting (made for
    # the train step's reused buffers) holds every freed tensor copy, which measures the
    # allocator, not the export.
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=root, LORA_JAX_MALLOC="default")
    sharded_env = dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    sharded = _child_peak(launch + [f"--max_shard_size={args.max_shard_size}",
                                       f"--output={os.path.join(tmp, 'shards')}"], sharded_env)
    # The process alone (jax, torch): absl's --helpshort imports everything and exits 1.
    imports = _child_peak(launch[:2] + ["--helpshort"], env, status=1)
    whole = _child_peak(launch + [f"--output={os.path.join(tmp, 'merged.safetensors')}"], env)
  mib = lambda b: b / 2**20
  print(f"base: {sum(x.size for x in jax.tree.leaves(abstract)) / 1e6:.0f}M float32 parameters, "
        f"{mib(base_bytes):.0f} MiB")
  print(f"the launcher's imports alone: peak RSS {mib(imports):.0f} MiB")
  print(f"one .safetensors file: peak RSS {mib(whole):.0f} MiB, above the imports "
        f"{(whole - imports) / base_bytes:.2f}x the base")
  print(f"--max_shard_size={args.max_shard_size} on 8 fake devices: peak RSS "
        f"{mib(sharded):.0f} MiB, above the imports {(sharded - imports) / base_bytes:.2f}x the "
        "base")


if __name__ == "__main__":
  main()
