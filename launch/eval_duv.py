r"""Score trained DUV models on their held-out pieces against trivial baselines; print the table.

python launch/eval_duv.py --runs=runs/duv_proof/base,runs/duv_proof/pop_008,\
runs/duv_proof/pop_010,runs/duv_proof/pop_022,runs/duv_proof/pop_191 \
  --mean_over='^pop_' --out=runs/duv_proof/table.md

Each run is a training workdir (launch/train_duv.py, launch/train_duv_lora.py): its
duv_split.json names the saved model and the pieces it never saw. The metrics and baselines are
lora_jax.duv.evaluate's. Bad input ends in one error line and exit status 1.
"""

import json
import re

from absl import flags

from lora_jax import atomic, cli
from lora_jax.duv import evaluate

_RUNS = flags.DEFINE_list("runs", None, "training workdirs to evaluate", required=True)
_MEAN_OVER = flags.DEFINE_string("mean_over", "", "regex over run names: also print the mean of "
                                 "those runs (leave-one-song-out folds)")
_OUT = flags.DEFINE_string("out", "", "also write the table (markdown) here, and JSON beside it")


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments {argv[1:]}")
  results = [evaluate.evaluate_run(path) for path in _RUNS.value]
  table = evaluate.markdown(results)
  if _MEAN_OVER.value:
    folds = [r for r in results if re.search(_MEAN_OVER.value, r.name)]
    if not folds:
      raise ValueError(f"--mean_over {_MEAN_OVER.value!r} matches none of the runs "
                       f"{[r.name for r in results]}")
    table += "\n" + evaluate.markdown(folds, mean_label=f"mean of {len(folds)} runs")
  print(table)
  if _OUT.value:
    atomic.write_text(_OUT.value, table)
    atomic.write_text(_OUT.value.rsplit(".", 1)[0] + ".json",
                      json.dumps(evaluate.to_json(results), indent=1) + "\n")
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  cli.run(main, "eval_duv")
