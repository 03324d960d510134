"""Loading a Wav2Lip lip-sync expert for the generator's sync loss (`config.loss.syncnet_weights`).

One rule: **a directory is an expert trained here, a file is Wav2Lip's released weights**:

* a directory: a `launch.train_syncnet` workdir or its `checkpoints` folder (the kept
  checkpoint with the lowest `val_loss`, as Wav2Lip picks its expert; the latest one if none
  recorded a val loss), or one step folder `WORKDIR/checkpoints/<step>` (that checkpoint);
* a file: `lipsync_expert.pth` (needs torch) or an `.npz` of its state_dict, converted by
  `syncnet.load_wav2lip_syncnet`.

Paths go through `etils.epath` (local or `gs://`).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from diff2lip_jax.inference import checkpoints as layout
from diff2lip_jax.models import syncnet
from diff2lip_jax.training import paths


def _checkpoint_step_dir(path: epath.Path) -> epath.Path:
  """`path` (a workdir, its `checkpoints` folder, or a step folder) -> the step folder (the
  lowest `val_loss` among the kept checkpoints, else the latest)."""
  if (path / layout.STATE_ITEM).is_dir():
    return path
  ckpt = path / layout.WORKDIR_CHECKPOINTS
  ckpt = paths.absolute(ckpt if ckpt.is_dir() else path)
  options = ocp.CheckpointManagerOptions(
      read_only=True, best_fn=lambda m: m[layout.BEST_METRIC], best_mode="min")
  with ocp.CheckpointManager(ckpt, options=options) as mngr:
    step = mngr.best_step()
    step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"{path} is a directory but holds no SyncNet checkpoint: expected a "
                            "launch.train_syncnet workdir, its checkpoints/ folder or a "
                            "checkpoints/<step> folder (a file would be read as Wav2Lip weights)")
  return ckpt / str(step)


def load_trained_expert(path: str | os.PathLike, dtype: Any = jnp.float32,
                        ) -> tuple[syncnet.Wav2LipSyncNet, dict]:
  """(model, {"params", "batch_stats"}) of an expert trained by
  `syncnet_train.train_and_evaluate`.

  Args:
    path: a `launch.train_syncnet` workdir or its `checkpoints` folder (the checkpoint with
      the lowest val loss, else the latest), or a step folder `checkpoints/<step>`.
    dtype: compute dtype of the returned model.

  Returns:
    The model (eval-mode use: `apply(variables, mel, faces, train=False)`) and its variables
    as float32 numpy, restored without the optimizer's configuration (the checkpoint's own
    tree metadata gives the shapes).

  Raises:
    FileNotFoundError: no checkpoint there.
  """
  step_dir = _checkpoint_step_dir(epath.Path(path))
  with ocp.StandardCheckpointer() as ckptr:
    meta = ckptr.metadata(step_dir / layout.STATE_ITEM)
    tree = getattr(meta, "item_metadata", meta)
    tree = getattr(tree, "tree", tree)
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), tree)
    restored = ckptr.restore(step_dir / layout.STATE_ITEM, target)
  logging.info("SyncNet expert from %s", step_dir)
  return (syncnet.Wav2LipSyncNet(dtype=dtype),
          {"params": restored["params"], "batch_stats": restored["batch_stats"]})


def load_expert(path: str | os.PathLike, dtype: Any = jnp.float32,
                ) -> tuple[syncnet.Wav2LipSyncNet, dict]:
  """(model, variables) of a Wav2Lip lip-sync expert: a directory is one trained here
  (`load_trained_expert`), a file is Wav2Lip's `lipsync_expert.pth` / `.npz`
  (`syncnet.load_wav2lip_syncnet`). See the module docstring.

  Raises:
    FileNotFoundError: a directory without checkpoints.
    convert.ConversionError: a missing or mismatched weights file.
  """
  if epath.Path(path).is_dir():
    return load_trained_expert(path, dtype)
  return syncnet.load_wav2lip_syncnet(path, dtype)
