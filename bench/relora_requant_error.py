r"""python bench/relora_requant_error.py --run=runs/relora_compare/relora --every=75 --steps=300

What re-quantising every ReLoRA fold costs in the weights, measured on the real deltas of a float
ReLoRA run (bench/relora_compare.py's `relora` arm, whose checkpoints hold the folded base after
every reset). W_k is the float run's base after k folds, D_k = W_k - W_(k-1) its k-th fold. The
re-quantised chain is what ReLoRA over a quantised base does with those same folds:
    Q_0 = quant(W_0),  Q_k = quant(deq(Q_(k-1)) + D_k)
(`quant.quantize`/`dequantize`, the functions the reset uses). Per k, over every adapted kernel
that is quantised (summed squares):
  chain      ||deq(Q_k) - W_k|| / ||W_k||: the accumulated error against the float ReLoRA base;
  one-shot   ||deq(quant(W_k)) - W_k|| / ||W_k||: quantising W_k once, the floor;
  fold kept  <deq(Q_k) - deq(Q_(k-1)), D_k> / ||D_k||^2: how much of the fold the codes took up;
  fold error ||deq(Q_k) - deq(Q_(k-1)) - D_k|| / ||D_k||.
"""

import os

import numpy as np
import orbax.checkpoint as ocp
from absl import app, flags

from lora_jax import quant, tree_paths
from lora_jax.interop import flax_weights

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_RUN = flags.DEFINE_string("run", None, "Workdir of a float ReLoRA run with every checkpoint kept.")
_EVERY = flags.DEFINE_integer("every", 75, "Its relora_every.")
_STEPS = flags.DEFINE_integer("steps", 300, "Its steps.")
_KIND = flags.DEFINE_string("kind", "nf4", "Quantisation format.")
_BASE = flags.DEFINE_string("base", os.path.join(_ROOT, "assets", "base_model",
                                                 "base_model.safetensors"), "Its base file.")
flags.mark_flags_as_required(["run"])


def _flat(tree) -> dict:
  return {tree_paths.dotted(k): np.asarray(v, np.float32)
          for k, v in tree_paths.flatten(tree).items()}


def main(argv):
  del argv
  manager = ocp.CheckpointManager(os.path.join(os.path.abspath(_RUN.value), "checkpoints"),
                                  item_names=("base",))
  steps = list(range(_EVERY.value, _STEPS.value + 1, _EVERY.value))
  missing = [s for s in steps if s not in manager.all_steps()]
  if missing:
    raise SystemExit(f"{_RUN.value} has no checkpoint of steps {missing}")
  bases = [_flat(manager.restore(s, args=ocp.args.Composite(
      base=ocp.args.StandardRestore())).base) for s in steps]
  with flax_weights.safetensors.safe_open(_BASE.value, framework="np") as f:
    first = {name: f.get_tensor(name).astype(np.float32) for name in f.keys()}
  chain = [first] + bases
  kind = _KIND.value
  # The adapted, quantisable kernels: those the folds changed.
  names = [n for n, w in bases[-1].items() if n.endswith(".kernel") and w.ndim == 2
           and not np.array_equal(w, first[n]) and (kind == "int8" or w.shape[0] % 64 == 0)]
  q = {n: quant.quantize(first[n], kind, n) for n in names}
  deq = lambda k: np.asarray(quant.dequantize(k), np.float32)
  print(f"{len(names)} adapted kernels quantised as {kind}; folds at steps {steps}")
  print("| folds | step | chain error | one-shot error | fold kept | fold error |\n"
        "|---:|---:|---:|---:|---:|---:|")
  w0 = sum(float(np.sum(first[n].astype(np.float64) ** 2)) for n in names)
  e0 = sum(float(np.sum((deq(q[n]) - first[n]).astype(np.float64) ** 2)) for n in names)
  print(f"| 0 | 0 | {np.sqrt(e0 / w0):.4%} | {np.sqrt(e0 / w0):.4%} | | |")
  for k, step in enumerate(steps, start=1):
    sums = np.zeros(6)
    for n in names:
      prev = deq(q[n])
      d = (chain[k][n] - chain[k - 1][n]).astype(np.float64)
      q[n] = quant.quantize(prev + d.astype(np.float32), kind, n)
      now = deq(q[n]).astype(np.float64)
      w = chain[k][n].astype(np.float64)
      moved = now - prev
      sums += [np.sum((now - w) ** 2), np.sum(w ** 2),
               np.sum((deq(quant.quantize(chain[k][n], kind, n)) - w) ** 2),
               np.sum(moved * d), np.sum(d ** 2), np.sum((moved - d) ** 2)]
    chain_e, norm, shot, kept, dd, fold_e = sums
    print(f"| {k} | {step} | {np.sqrt(chain_e / norm):.4%} | {np.sqrt(shot / norm):.4%} | "
          f"{kept / dd:.3f} | {np.sqrt(fold_e / dd):.3f} |")


if __name__ == "__main__":
  app.run(main)
