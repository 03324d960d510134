"""pool3 features of the FID InceptionV3 for batches of frames (see `models/inception.py`)."""

from __future__ import annotations

import os
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from diff2lip_jax import sharding
from diff2lip_jax.models import inception, syncnet

RANDOM = "random"


def load_inception(path: str | os.PathLike) -> tuple[inception.FIDInceptionV3, dict]:
  """(model, variables) from pytorch-fid's weights file, or random weights for `"random"`
  (a pipeline check only: FID values are then meaningless, and a warning says so)."""
  if str(path) == RANDOM:
    logging.warning("RANDOM WEIGHTS for the FID InceptionV3: FID values are meaningless. Pass "
                    "pytorch-fid's pt_inception-2015-12-05-6726825d.pth for real FIDs.")
    model = inception.FIDInceptionV3()
    abstract = jax.eval_shape(lambda: inception.init_fid_inception(model, jax.random.key(0)))
    return model, syncnet.random_variables(abstract)
  return inception.load_fid_inception(path)


class InceptionFeatures:
  """Callable: `[N, H, W, 3]` uint8 RGB frames -> `[N, 2048]` float32 pool3 features.

  Runs in fixed-size batches split over this host's devices (one compilation per frame size).
  """

  def __init__(self, weights: str | os.PathLike = RANDOM, batch_size: int = 50,
               mesh: Optional[jax.sharding.Mesh] = None):
    self.model, variables = load_inception(weights)
    self.mesh = mesh or sharding.local_mesh()
    self.variables = sharding.replicate(variables, self.mesh)
    self.batch_size = batch_size
    self._fn = jax.jit(lambda v, x: self.model.apply(v, x.astype(jnp.float32) / 255.0))

  def __call__(self, frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
      raise ValueError(f"frames must be [N, H, W, 3] uint8 RGB, got {frames.shape} {frames.dtype}")
    if len(frames) == 0:
      return np.zeros((0, inception.FID_DIM), np.float32)
    return sharding.batched_apply(lambda x: self._fn(self.variables, x), frames,
                                  self.batch_size, self.mesh).astype(np.float32)
