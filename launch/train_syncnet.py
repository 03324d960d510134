r"""Train the Wav2Lip lip-sync expert (SyncNet_color) on prepared data (absl entry point).

  python -m launch.train_syncnet --config configs/syncnet_debug.py --workdir /tmp/syncnet_debug
  python -m launch.train_syncnet --config configs/syncnet.py --workdir DIR \
      --config.data.data_dir=DIR/tfds

Rerunning with the same --workdir resumes. The trained expert is used by the main training
with `--config.loss.syncnet_weights=WORKDIR` (see `diff2lip_jax.training.syncnet_train`).
Multi-host: as `launch.train` (every host runs the same command with --multihost or the
coordinator flags).
"""

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from diff2lip_jax.training import syncnet_train

_CONFIG = config_flags.DEFINE_config_file("config", None, "expert training config file",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "checkpoints, TensorBoard logs, metrics.jsonl")
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
    syncnet_train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
