r"""Train Diff2Lip (absl entry point; flax-examples style; flags in `launch.runner`).

  python -m launch.train --config configs/debug.py --workdir /tmp/d2l_debug
  python -m launch.train --config configs/diff2lip_voxceleb2.py --workdir DIR \
      --config.data.data_dir=DIR/tfds --config.batch_size=256

Rerunning with the same --workdir resumes. Multi-host: every host runs the same command with
--multihost (TPU) or the coordinator flags (GPU); see `launch.runner`.
"""

from diff2lip_jax.training import train
from launch import runner

if __name__ == "__main__":
  runner.run(train.train_and_evaluate)
