r"""Progressive distillation (`launch.distill`; `diff2lip_jax.training.distill`).

  python -m launch.distill --config configs/distill.py --workdir W --config.teacher=CKPT \
      --config.data.data_dir=DIR/tfds
  python -m launch.distill --config configs/distill.py:debug --workdir W --config.teacher=W0

Default: the VoxCeleb2 data and mesh of `configs/diff2lip_voxceleb2.py`; a 32-step DDIM
teacher distilled to a 4-step student in 3 rounds (32 -> 16 -> 8 -> 4) of `steps_per_round`
optimizer steps each. `:debug`: the synthetic clips of `configs/debug.py`, float32, 8 -> 2 steps
in two rounds of 100 steps (CPU minutes; its teacher: a `configs/debug.py` workdir).
The model architecture is the teacher's (no `config.model`).
"""

import ml_collections

from configs import debug, diff2lip_voxceleb2


def get_config(mode: str = "") -> ml_collections.ConfigDict:
  base = debug.get_config() if mode == "debug" else diff2lip_voxceleb2.get_config()
  c = ml_collections.ConfigDict()
  c.teacher = ""                      # --config.teacher=CKPT (required)
  c.teacher_steps = 32                # DDIM steps of the first teacher ("trailing" grid)
  c.student_steps = 4                 # the final student's steps; teacher_steps / 2^k
  c.steps_per_round = 8000            # optimizer steps per halving
  for key in ("seed", "dtype", "face_hide_percentage", "diffusion", "data", "batch_size",
              "mesh", "log_every", "sample_every", "checkpoint_every", "keep_checkpoints",
              "keep_best", "async_checkpointing"):
    c[key] = base[key]
  c.optim = ml_collections.ConfigDict(dict(
      lr=5e-5, warmup_steps=0, weight_decay=0.0, b1=0.9, b2=0.999, grad_clip=1.0,
      ema_decay=0.999))
  c.sample_every = 2000
  c.checkpoint_every = 2000
  if mode == "debug":
    c.teacher_steps, c.student_steps, c.steps_per_round = 8, 2, 100
    c.optim.lr, c.optim.ema_decay = 1e-4, 0.9
    c.log_every, c.sample_every, c.checkpoint_every = 10, 100, 50
  elif mode:
    raise ValueError(f"unknown configs/distill.py mode {mode!r}; use '' or 'debug'")
  return c
