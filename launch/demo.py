r"""The hierarchical style adapters end to end on real pieces, in minutes on a CPU.

python launch/demo.py --config=configs/demo.py --workdir=runs/demo
python launch/demo.py --config=configs/demo.py:full --workdir=runs/demo_full

See configs/demo.py for what it does and its variants. Prints the held-out NLL table and where
every file went; exits 1 if the table does not show each level lowering the child style's NLL.
"""

import os

from absl import flags
from absl import logging
import jax

from lora_jax import cli
from lora_jax.hierarchy import demo, evaluation

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIG = cli.define_config(os.path.join(_ROOT, "configs", "demo.py"), "Demo config file.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "Folder for packs, models and samples.")


def main(args):
  if len(args) > 1:
    raise ValueError(f"unexpected arguments: {args[1:]}")
  config = demo.load_config(_CONFIG.value)
  logging.info("JAX %s on %d devices: %s", jax.__version__, jax.device_count(), jax.devices())
  result = demo.run(config, _WORKDIR.value)
  print("\n" + evaluation.heading("test"))
  print(result.table.format())
  print("\nSibling checks (an adapter should not cost much on music it was not trained for):")
  for report in result.sibling_checks:
    print(report)
  print("\nFiles:")
  for name, path in result.files.items():
    print(f"  {name}: {path}")
  print("\nSeconds: " + ", ".join(f"{k} {v:.0f}" for k, v in result.seconds.items())
        + f"; total {sum(result.seconds.values()):.0f}")
  if result.problems:
    raise ValueError("the table does not show what it should: " + "; ".join(result.problems))


if __name__ == "__main__":
  cli.run(main, "demo")
