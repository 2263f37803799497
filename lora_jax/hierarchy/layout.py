"""Where the hierarchy's files go, as the seed lays them out.

  <base dir>/base_model.safetensors, vocab.json, run/         launch/train_base.py
  <output dir>/<parent>/<parent>.lora, vocab.json, run/       launch/train_parent_adapter.py
  <output dir>/<parent>/<child>/<child>.lora, vocab.json, run/  launch/train_child_adapter.py
`run/` is the training loop's workdir: checkpoints/, metrics.csv, TensorBoard events and
status.json. Rerunning a command with the same output folder resumes from `run/`.
"""

import os

BASE_FILE = "base_model.safetensors"
RUN = "run"


def base_file(base_dir: str) -> str:
  return os.path.join(base_dir, BASE_FILE)


def parent_dir(output_dir: str, parent: str) -> str:
  return os.path.join(output_dir, parent)


def parent_lora(output_dir: str, parent: str) -> str:
  return os.path.join(parent_dir(output_dir, parent), f"{parent}.lora")


def child_dir(output_dir: str, parent: str, child: str) -> str:
  return os.path.join(parent_dir(output_dir, parent), child)


def child_lora(output_dir: str, parent: str, child: str) -> str:
  return os.path.join(child_dir(output_dir, parent, child), f"{child}.lora")


def run_dir(level_dir: str) -> str:
  return os.path.join(level_dir, RUN)
