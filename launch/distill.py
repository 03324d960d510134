r"""Distil a Diff2Lip checkpoint into a few-step DDIM student (progressive distillation).

  python -m launch.distill --config configs/distill.py --workdir W --config.teacher=CKPT \
      --config.data.data_dir=DIR/tfds
  python -m launch.distill --config configs/distill.py:debug --workdir /tmp/distill_debug \
      --config.teacher=/tmp/d2l_debug

CKPT: anything `inference.checkpoints.load_model` reads (a converted directory, a launch.train
workdir, an upstream .pt/.npz). Rerunning with the same --workdir resumes. The student:
`generate --checkpoint W --sampler ddim --steps N` (N = config.student_steps).
"""

from diff2lip_jax.training import distill
from launch import runner

if __name__ == "__main__":
  runner.run(distill.distill_and_evaluate)
