"""JAX's line about a TPU backend it could not start is dropped on machines without TPU chips, and
only that line."""

import glob
import logging

import pytest

from lora_jax import cli


@pytest.mark.skipif(bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*")),
                    reason="a machine with TPU device files keeps the line")
def test_only_the_missing_tpu_line_is_dropped(caplog):
  cli.quiet_missing_tpu()
  cli.quiet_missing_tpu()  # twice adds one filter
  logger = logging.getLogger("jax._src.xla_bridge")
  assert sum(isinstance(f, cli._NoTpuLineFilter) for f in logger.filters) == 1  # pylint: disable=protected-access
  with caplog.at_level(logging.INFO, logger="jax._src.xla_bridge"):
    logger.info("Unable to initialize backend 'tpu': INTERNAL: Failed to open libtpu.so")
    logger.info("Unable to initialize backend 'cuda': no GPU")
  assert [r.getMessage() for r in caplog.records] == ["Unable to initialize backend 'cuda': no GPU"]
