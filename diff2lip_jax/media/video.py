"""Decoding videos and still images to upright RGB frames in presentation order, with PyAV.

Upstream Diff2Lip (`generate.py`, spec §4.5) shells out to ffmpeg to dump frames as JPEGs and reads
them with cv2. Here frames are decoded in-process (no subprocess, no JPEG round trip), the way
players show them:

* frames come in presentation order with increasing presentation times (`Video.times`), also
  from containers that stamp frames in decode order (packed B-frame DivX/XviD AVI); nothing is
  resampled to 25 fps;
* the display matrix is applied (a phone video tagged "rotate 90", H.264 or 10-bit HEVC, comes
  out upright, with the size as displayed);
* YUV is converted with the stream's own matrix and range; its colour tags are kept
  (`Video.color`, `FrameSource.color`) for the output;
* still images (png/jpg/...) are read with Pillow (EXIF orientation applied, as `cv2.imread`
  does; CMYK, palette, grey, alpha and 16-bit images become 8-bit RGB) and give one frame.

`read_video` decodes everything at once; `open_source` gives a `FrameSource` that reads a
video twice in bounded memory (`scan` once in order, doing every check that can fail, then
`read(start, stop)`). Building blocks: `decode`, `source`. Encoding is `encode`.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

from diff2lip_jax.media.decode import (IMAGE_SUFFIXES, ColorInfo, Video, VideoError,
                                       read_still)
from diff2lip_jax.media.source import FrameSource, InMemorySource, VideoFileSource

__all__ = ["VideoError", "Video", "ColorInfo", "read_video", "FrameSource", "InMemorySource",
           "VideoFileSource", "open_source", "IMAGE_SUFFIXES"]


def _check_path(path: pathlib.Path) -> None:
  if not path.is_file():
    raise VideoError(f"video file not found: {path}. Check the path (and that it is a file, "
                     "not a folder).")


def read_video(path: str | os.PathLike,
               max_frames: int | None = None,
               still_fps: float = 25.0) -> Video:
  """Decodes a video (or still image) file to upright RGB frames in presentation order.

  Args:
    path: any file PyAV/ffmpeg can demux and decode (mp4, mkv, avi, webm, mov, ...), or
      an image (png/jpg/bmp/webp/tiff) which gives a single frame.
    max_frames: stop after this many frames (None: all).
    still_fps: frame rate reported for a still image.

  Returns:
    `Video` with frames [N, H, W, 3] uint8 RGB (H, W as displayed), fps (float), times [N]
    float64 seconds (strictly increasing, from 0) and the colour tags.

  Raises:
    VideoError: the file is missing, unreadable, has no video stream or no decodable frame,
      or changes size mid-stream.
  """
  path = pathlib.Path(path)
  _check_path(path)
  if max_frames is not None and max_frames < 1:
    raise VideoError(f"max_frames must be >= 1 or None, got {max_frames}")
  if path.suffix.lower() in IMAGE_SUFFIXES:
    return read_still(path, still_fps)
  source = VideoFileSource(path, still_fps)
  try:
    frames = [batch for _, batch, _ in source.scan(256, max_frames=max_frames)]
  finally:
    source.close()
  return Video(frames=np.concatenate(frames), fps=source.fps, times=source.times,
               color=source.color)


def open_source(video: str | os.PathLike | Video, still_fps: float = 25.0) -> FrameSource:
  """A `FrameSource` for a decoded `Video`, an image file (decoded in memory) or a video file.

  Raises:
    VideoError: the file does not exist (other checks run in `FrameSource.scan`).
  """
  if isinstance(video, Video):
    return InMemorySource(video)
  path = pathlib.Path(video)
  _check_path(path)
  if path.suffix.lower() in IMAGE_SUFFIXES:
    return InMemorySource(read_still(path, still_fps))
  return VideoFileSource(path, still_fps)
