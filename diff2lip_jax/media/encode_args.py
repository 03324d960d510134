"""Argument checks and small helpers of `encode` (frames, mono audio, frame rates, paths).

Every check raises `VideoError` with a one-line message saying what to pass instead.
"""

from __future__ import annotations

import fractions
import os
import pathlib

import av
import numpy as np

from diff2lip_jax.media.decode import VideoError

__all__ = ["fps_fraction", "check_frames", "check_audio", "is_constant_rate", "fit_audio",
           "same_file", "check_destination", "chroma_unit"]


def fps_fraction(fps: float | fractions.Fraction) -> fractions.Fraction:
  """Frame rate as an exact fraction (29.97002997 -> 30000/1001, 25.0 -> 25/1)."""
  if isinstance(fps, fractions.Fraction):
    return fps
  return fractions.Fraction(float(fps)).limit_denominator(1001)


def check_frames(frames: np.ndarray) -> np.ndarray:
  """`frames` as an [N, H, W, 3] uint8 array (N >= 1, H, W >= 2)."""
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
    raise VideoError(f"frames must be [N, H, W, 3] with N >= 1, got shape {frames.shape}")
  if frames.dtype != np.uint8:
    raise VideoError(f"frames must be uint8 RGB, got dtype {frames.dtype}; convert with "
                     "np.clip(x, 0, 255).astype(np.uint8)")
  if frames.shape[1] < 2 or frames.shape[2] < 2:
    raise VideoError(f"frames are too small to encode: {frames.shape[1]}x{frames.shape[2]}")
  return frames


def check_audio(audio: np.ndarray) -> np.ndarray:
  """`audio` as [S] float32 mono in [-1, 1] (clipped); NaN/inf or other shapes are refused."""
  audio = np.asarray(audio)
  if audio.ndim == 2 and 1 in audio.shape:
    audio = audio.reshape(-1)
  if audio.ndim != 1:
    raise VideoError(f"audio must be mono [S] float32, got shape {audio.shape}; mix it down "
                     "first, e.g. audio.mean(axis=-1)")
  if not np.issubdtype(audio.dtype, np.floating):
    raise VideoError(f"audio must be float in [-1, 1], got dtype {audio.dtype}; for int16 PCM "
                     "use audio.astype(np.float32) / 32768")
  audio = np.asarray(audio, np.float32)
  if not np.all(np.isfinite(audio)):
    raise VideoError("audio contains NaN or inf samples")
  if audio.size and (audio.min() < -1.0 or audio.max() > 1.0):
    audio = np.clip(audio, -1.0, 1.0)
  return audio


def is_constant_rate(times: np.ndarray, fps: float, tolerance: float = 1e-3) -> bool:
  """True if `times[i] == i / fps` within `tolerance` seconds for every frame."""
  times = np.asarray(times, np.float64)
  return bool(np.all(np.abs(times - np.arange(len(times)) / float(fps)) <= tolerance))




def same_file(a: pathlib.Path, b: str | os.PathLike) -> bool:
  """True if `a` and `b` name the same existing file (links and relative paths resolved)."""
  try:
    return a.exists() and pathlib.Path(b).exists() and os.path.samefile(a, b)
  except OSError:
    return False


def check_destination(path: str | os.PathLike, inputs=()) -> pathlib.Path:
  """`path` as an output file: refused if it is a folder or names one of `inputs` (files that
  must never be replaced, e.g. the source video and audio)."""
  path = pathlib.Path(path)
  for other in inputs:
    if other is not None and same_file(path, other):
      raise VideoError(f"the output {path} is also an input ({other}); choose another output "
                       "path")
  if path.is_dir():
    raise VideoError(f"the output {path} is a folder; give a file name such as out.mp4")
  return path


def chroma_unit(pix_fmt: str) -> tuple[int, int]:
  """(rows, cols) granularity of a pixel format's chroma planes: (2, 2) for 4:2:0."""
  try:
    fmt = av.VideoFormat(pix_fmt)
  except ValueError as e:
    raise VideoError(f"unknown pix_fmt {pix_fmt!r}; use e.g. yuv420p or yuv444p") from e
  if len(fmt.components) < 2:
    return 1, 1
  probe = av.VideoFormat(pix_fmt, 4, 4)
  return 4 // probe.components[1].height, 4 // probe.components[1].width


def fit_audio(audio: np.ndarray, num_samples: int) -> np.ndarray:
  """[S] audio trimmed, or zero-padded at the end, to `num_samples` samples."""
  audio = np.asarray(audio)
  if audio.shape[0] >= num_samples:
    return audio[:num_samples]
  return np.pad(audio, (0, num_samples - audio.shape[0]))
