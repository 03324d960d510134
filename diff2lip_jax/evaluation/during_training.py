"""The training loop's evaluator (big_vision style): lip-sync a fixed set of validation clips
with the current EMA params through the inference core, and score them.

Every `config.eval_every` steps `launch.train` calls `evaluate(config, model, params, step)`:
each clip is regenerated from its own audio (upstream's cross mode on the clip's own sound: every
frame is its own input and reference, so the real frames are the ground truth) with the
upstream preset and `config.eval.timestep_respacing`, and scored on the 128x128 face crops of the
boxes the core used: SSIM and PSNR (whole crop and mouth rows), and LSE-C / LSE-D when
`config.eval.syncnet_weights` (syncnet_python's `syncnet_v2.model`) is set.

`config.eval` fields: `num_clips`, `timestep_respacing`, `data_root` (a folder of videos; empty:
the synthetic videos that `launch.train` made beside the data), `filelist` (optional upstream
filelist relative to `data_root`; empty: the first `num_clips` videos found), `crop`
("voxceleb2": upstream's fixed crop, as `data.prepare` stores VoxCeleb2; "detect"), `detector`
("dlib" or "s3fd" with `s3fd_path`), `syncnet_weights`.

It runs on the calling host's devices only (no collectives): call it from one process.
"""

from __future__ import annotations

import functools
import pathlib
from typing import Any

import ml_collections
import numpy as np

from diff2lip_jax.evaluation import lse, metrics
from diff2lip_jax.inference import checkpoints, crops, filelists
from diff2lip_jax.inference.options import LipsyncOptions
from diff2lip_jax.inference.pipeline import Lipsyncer
from diff2lip_jax.media import video as video_lib

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi", ".webm")


def eval_clips(config: ml_collections.ConfigDict) -> list[pathlib.Path]:
  """The validation videos of a training config (sorted, at most `config.eval.num_clips`).

  Raises:
    FileNotFoundError: no videos where the config points.
  """
  ec = config.eval
  root = pathlib.Path(ec.data_root or pathlib.Path(config.data.data_dir) / "videos")
  if ec.filelist:
    paths = [filelists.resolve_media(root, p.video)
             for p in filelists.read_filelist(root / ec.filelist)]
  else:
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
  paths = paths[:int(ec.num_clips)]
  if not paths:
    raise FileNotFoundError(f"no validation videos under {root}: set config.eval.data_root "
                            "(and config.eval.filelist) or config.eval_every=0")
  return paths


@functools.cache
def _sync_scorer(weights: str) -> lse.SyncScorer:
  return lse.SyncScorer(weights)


def evaluate(config: ml_collections.ConfigDict, model: Any, params: Any,
             step: int) -> dict[str, float]:
  """Scores `params` on the validation clips (see the module docstring).

  Args:
    config: the training config (`config.eval`, `config.face_hide_percentage`).
    model: the `TFGModel` being trained.
    params: host-local (numpy) params, e.g. the EMA params.
    step: the training step (for the log).

  Returns:
    {"eval/ssim", "eval/psnr", "eval/ssim_mouth", "eval/psnr_mouth"} (+ "eval/lse_c",
    "eval/lse_d"), means over clips of per-clip means.
  """
  ec = config.eval
  options = LipsyncOptions.preset(
      "upstream", timestep_respacing=ec.timestep_respacing, crop=ec.crop, detector=ec.detector,
      s3fd_path=ec.s3fd_path or None, face_hide_percentage=config.face_hide_percentage,
      init_noise=None, progress=False)
  loaded = checkpoints.LoadedModel(model, params, {}, f"training step {step}")
  lipsyncer = Lipsyncer(loaded, options)
  scores: dict[str, list[float]] = {}
  for path in eval_clips(config):
    trace: dict = {}
    result = lipsyncer.run(path, path, trace=trace)
    n = len(result.frames)
    real = video_lib.read_video(path, max_frames=n).frames
    boxes = trace["boxes"][:n]
    size = model.image_size
    im = metrics.image_metrics(crops.crop_faces(real, boxes, size),
                               crops.crop_faces(result.frames, boxes, size),
                               config.face_hide_percentage)
    for key, values in im.items():
      scores.setdefault(f"eval/{key}", []).append(float(np.mean(values)))
    if ec.syncnet_weights:
      sync = _sync_scorer(str(ec.syncnet_weights))(result.frames, result.audio)
      for key in ("lse_c", "lse_d"):
        if sync:
          scores.setdefault(f"eval/{key}", []).append(float(sync[key]))
  return {k: float(np.mean(v)) for k, v in scores.items()}
