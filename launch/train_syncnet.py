r"""Train the Wav2Lip lip-sync expert (SyncNet_color) on prepared data (absl entry point; flags
in `launch.runner`).

  python -m launch.train_syncnet --config configs/syncnet_debug.py --workdir /tmp/syncnet_debug
  python -m launch.train_syncnet --config configs/syncnet.py --workdir DIR \
      --config.data.data_dir=DIR/tfds

Rerunning with the same --workdir resumes. The trained expert is used by the main training
with `--config.loss.syncnet_weights=WORKDIR` (see `diff2lip_jax.training.syncnet_train`).
Multi-host: as `launch.train` (every host runs the same command with --multihost or the
coordinator flags).
"""

from diff2lip_jax.training import syncnet_train
from launch import runner

if __name__ == "__main__":
  runner.run(syncnet_train.train_and_evaluate)
