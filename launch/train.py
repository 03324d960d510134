r"""Train Diff2Lip (absl entry point; flax-examples style).

  python -m launch.train --config configs/debug.py --workdir /tmp/d2l_debug
  python -m launch.train --config configs/diff2lip_voxceleb2.py --workdir DIR \
      --config.data.data_dir=DIR/tfds --config.batch_size=256

Rerunning with the same --workdir resumes. Multi-host (TPU pods, several GPU hosts): every
host runs the same command; `jax.distributed.initialize()` is called first (on TPU VMs it needs
no arguments; on GPU hosts pass --coordinator_address, --num_processes, --process_id, or set
the JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID environment variables).
"""

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from diff2lip_jax.training import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "training config file", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "checkpoints, TensorBoard logs and samples")
_MULTIHOST = flags.DEFINE_boolean("multihost", False, "call jax.distributed.initialize()")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (GPU)")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "number of processes (GPU)")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's index (GPU)")


def main(argv):
  del argv
  if _MULTIHOST.value or _COORDINATOR.value:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  logging.info("JAX %s, %d processes, %d devices (%s)", jax.__version__, jax.process_count(),
               jax.device_count(), jax.default_backend())
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
