"""Training on LRW (`python -m diff2lip_jax.data.prepare --layout lrw`): the paper's setup
with LRW's tfds dataset; LRW clips are 29 frames, so references come from the same 1.16 s."""

from configs import diff2lip_voxceleb2


def get_config():
  c = diff2lip_voxceleb2.get_config()
  c.data.dataset_name = "diff2lip_lrw"
  c.eval.crop = "detect"            # LRW is prepared with detected faces
  return c
