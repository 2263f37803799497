"""scripts/setup.sh refuses an unknown accelerator before it changes anything."""

import pathlib
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_unknown_accelerator_is_refused_in_one_line_before_anything_runs(tmp_path):
  done = subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh")], capture_output=True,
                        text=True, env={"PATH": "/usr/bin:/bin", "LORA_JAX_ACCELERATOR": "cuda11",
                                        "PYTHON": str(tmp_path / "no-python")})
  assert done.returncode == 1
  assert done.stderr.strip() == ("setup: LORA_JAX_ACCELERATOR must be cpu, cuda12, cuda13 or "
                                 "tpu, not 'cuda11'")
  assert done.stdout == ""
