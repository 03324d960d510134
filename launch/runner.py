"""The absl entry point shared by the trainers (`launch.train`, `launch.train_syncnet`).

Flags: --config (an ml_collections `get_config()` file; `--config.x=y` overrides), --workdir
(rerunning with the same one resumes), and the multi-host ones. Multi-host (TPU pods, several
GPU hosts): every host runs the same command; `jax.distributed.initialize()` is called first
(on TPU VMs it needs no arguments; on GPU hosts pass --coordinator_address, --num_processes,
--process_id, or set JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID).
"""

import sys
from typing import Any, Callable

import jax
from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "config file (get_config())",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "checkpoints, TensorBoard logs, metrics.jsonl")
_MULTIHOST = flags.DEFINE_boolean("multihost", False, "call jax.distributed.initialize()")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (GPU)")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "number of processes (GPU)")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's index (GPU)")


def run(train_and_evaluate: Callable[[Any, str], Any]) -> None:
  """Parses the flags and calls `train_and_evaluate(config, workdir)`; a configuration error
  (ValueError, FileNotFoundError) exits with its message instead of a traceback."""

  def main(argv):
    del argv
    if _MULTIHOST.value or _COORDINATOR.value:
      jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                                 num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
    logging.info("JAX %s, %d processes, %d devices (%s)", jax.__version__, jax.process_count(),
                 jax.device_count(), jax.default_backend())
    try:
      train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except (ValueError, FileNotFoundError) as e:
      sys.exit(f"error: {e}")

  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
