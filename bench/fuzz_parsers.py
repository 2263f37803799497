r"""python bench/fuzz_parsers.py --examples=2000

The fuzz targets of tests/fuzz_parsers_test.py (every parser of user files: the MIDI tokenizer
and decoder, MIDI bytes, DUV and style-pack manifests, `.lora` metadata, PEFT adapter_config.json,
the inference config) with many more examples than CI runs. Prints, per target, the cases run
and the failures (an exception other than the parser's declared error type, or a broken
tokenise-decode round trip), with the first few failures' messages; exits 1 if any failed.
"""

import collections
import os
import sys
import time

from absl import app, flags
import hypothesis
from hypothesis import HealthCheck, Phase, given, settings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests"))
import fuzz_targets  # pylint: disable=g-import-not-at-top,wrong-import-position

_EXAMPLES = flags.DEFINE_integer("examples", 2000, "examples per target")
_TARGETS = flags.DEFINE_list("targets", [], "only these targets (all if empty)")
_SEED = flags.DEFINE_integer("seed", 0, "hypothesis seed")


def _fuzz(target: fuzz_targets.Target) -> tuple[collections.Counter, list[str]]:
  """Run `target` on --examples generated inputs; count cases, declared errors and failures."""
  counts, messages = collections.Counter(), []

  # Generation only, no shrinking (which would re-run one failure many times): every case counts.
  @hypothesis.seed(_SEED.value)
  @settings(max_examples=_EXAMPLES.value, deadline=None, database=None,
            phases=[Phase.generate], suppress_health_check=list(HealthCheck))
  @given(target.strategy)
  def run(data):
    counts["cases"] += 1
    try:
      target.run(data)
    except target.declared:
      counts["declared"] += 1
    except Exception as e:  # pylint: disable=broad-except; counting them is the point
      counts["failures"] += 1
      if len(messages) < 3:
        messages.append(f"{type(e).__name__}: {str(e)[:160]}")

  run()
  return counts, messages


def main(argv):
  del argv
  total_cases = total_failures = 0
  for target in fuzz_targets.TARGETS:
    if _TARGETS.value and target.name not in _TARGETS.value:
      continue
    start = time.time()
    counts, messages = _fuzz(target)
    print(f"{target.name:22s} cases {counts['cases']:6d}  declared errors {counts['declared']:6d}"
          f"  failures {counts['failures']:3d}  ({time.time() - start:.0f} s)", flush=True)
    for m in messages:
      print(f"    {m}")
    total_cases += counts["cases"]
    total_failures += counts["failures"]
  print(f"total: {total_cases} cases, {total_failures} failures")
  sys.exit(1 if total_failures else 0)


if __name__ == "__main__":
  app.run(main)
