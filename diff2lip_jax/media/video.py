"""Decoding videos and still images to RGB frames with PyAV (and Pillow for images).

Upstream Diff2Lip (`generate.py`, spec §4.5) shells out to ffmpeg to dump frames as JPEGs and reads
them with cv2. Here frames are decoded in-process (no subprocess, no JPEG round trip):

* `read_video` decodes every frame to uint8 RGB, applying the stream's display rotation the way
  the ffmpeg CLI does (autorotate). Still images (png/jpg/...) are read with Pillow (EXIF
  orientation applied, as `cv2.imread` does) and give one frame. `Video.times` holds each frame's
  presentation time: nothing is resampled to 25 fps.
* `FrameSource` (`open_source`) reads a video twice in bounded memory: `scan` once in order, then
  `read(start, stop)` any range again (seeking where the container allows).

Encoding is `diff2lip_jax.media.encode`.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

import av
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["VideoError", "Video", "read_video", "FrameSource", "InMemorySource",
           "VideoFileSource", "open_source", "IMAGE_SUFFIXES"]

# Suffixes read as a single still frame with Pillow.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})

# PyAV/ffmpeg demuxers that mean "a single image" (used when the suffix is unknown).
_IMAGE_DEMUXERS = frozenset({"image2", "image2pipe"})


class VideoError(ValueError):
  """A video/image file cannot be read or written; the message says what to do."""


@dataclasses.dataclass
class Video:
  """Decoded frames of a video or still image.

  Attributes:
    frames: [N, H, W, 3] uint8 RGB.
    fps: frames per second (the stream's average rate; `still_fps` for an image).
    times: [N] float64 presentation time of each frame in seconds, relative to the
      first frame (so `times[0] == 0`). For constant-frame-rate input this is
      `arange(N) / fps`.
  """

  frames: np.ndarray
  fps: float
  times: np.ndarray

  @property
  def num_frames(self) -> int:
    """N, the number of frames."""
    return int(self.frames.shape[0])

  @property
  def size_hw(self) -> tuple[int, int]:
    """(H, W) of the frames in pixels."""
    return int(self.frames.shape[1]), int(self.frames.shape[2])

  @property
  def duration(self) -> float:
    """N / fps, in seconds."""
    return self.num_frames / self.fps


def _read_still(path: pathlib.Path, still_fps: float) -> Video:
  """Reads an image file with Pillow as a one-frame `Video`."""
  try:
    with Image.open(path) as im:
      im = ImageOps.exif_transpose(im)
      rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
  except (UnidentifiedImageError, OSError, ValueError) as e:
    raise VideoError(
        f"cannot read image {path}: {e}. Check that it is a valid PNG/JPEG image "
        "(re-save it with an image editor if unsure).") from e
  return Video(frames=rgb[None].copy(), fps=float(still_fps), times=np.zeros(1, np.float64))


def _frame_to_rgb(frame: av.VideoFrame) -> np.ndarray:
  """Converts a decoded frame to [H, W, 3] uint8 RGB, honouring its colour range and
  display rotation (counter-clockwise degrees, as ffmpeg's autorotate applies it)."""
  rgb = frame.reformat(format="rgb24", src_color_range=frame.color_range).to_ndarray()
  rotation = int(round(frame.rotation or 0))
  if rotation % 90 == 0 and rotation % 360 != 0:
    rgb = np.ascontiguousarray(np.rot90(rgb, k=rotation // 90))
  return rgb


def _stream_fps(stream: Any, known_times: list[float], default: float) -> float:
  """Frame rate of a video stream: its average, guessed or base rate (the first positive one),
  else the mean rate of the decoded timestamps `known_times` (seconds), else `default`."""
  for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
    if rate is not None and rate > 0:
      return float(rate)
  if len(known_times) >= 2 and known_times[-1] > known_times[0]:
    return (len(known_times) - 1) / (known_times[-1] - known_times[0])
  return float(default)


def read_video(path: str | os.PathLike,
               max_frames: int | None = None,
               still_fps: float = 25.0) -> Video:
  """Decodes a video (or still image) file to RGB frames.

  Args:
    path: any file PyAV/ffmpeg can demux and decode (mp4, mkv, avi, webm, mov, ...), or
      an image (png/jpg/bmp/webp/tiff) which gives a single frame.
    max_frames: stop after this many frames (None: all).
    still_fps: frame rate reported for a still image.

  Returns:
    `Video` with frames [N, H, W, 3] uint8 RGB, fps (float) and times [N] float64 seconds.

  Raises:
    VideoError: the file is missing, unreadable, has no video stream or no decodable frame.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise VideoError(f"video file not found: {path}. Check the path (and that it is a file, "
                     "not a folder).")
  if max_frames is not None and max_frames < 1:
    raise VideoError(f"max_frames must be >= 1 or None, got {max_frames}")
  if path.suffix.lower() in IMAGE_SUFFIXES:
    return _read_still(path, still_fps)

  try:
    container = av.open(str(path), mode="r")
  except (av.error.FFmpegError, OSError, ValueError) as e:
    raise VideoError(f"cannot open {path} as a video: {e}. Check that the file is a complete, "
                     "valid video (try playing it).") from e
  with container:
    if not container.streams.video:
      kinds = sorted({s.type for s in container.streams}) or ["none"]
      raise VideoError(f"{path} has no video stream (streams: {', '.join(kinds)}). Pass a "
                       "video or an image of a face, not an audio-only file.")
    fmt_name = container.format.name
    still = fmt_name in _IMAGE_DEMUXERS or fmt_name.endswith("_pipe")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    frames: list[np.ndarray] = []
    times: list[float | None] = []
    try:
      for frame in container.decode(stream):
        frames.append(_frame_to_rgb(frame))
        times.append(frame.time)
        if max_frames is not None and len(frames) >= max_frames:
          break
    except av.error.FFmpegError as e:
      if not frames:
        raise VideoError(f"cannot decode {path}: {e}. The file may be truncated or use an "
                         "unsupported codec; re-encode it to H.264 MP4.") from e
      # A damaged tail: keep the frames decoded so far, as ffmpeg does.
    if not frames:
      raise VideoError(f"{path} contains no decodable video frames. Check the file "
                       "(try playing it) or re-encode it.")
    if len({f.shape for f in frames}) != 1:
      raise VideoError(f"{path} changes frame size mid-stream; re-encode it to a constant "
                       "size first.")
    known = [t for t in times if t is not None]
    fps = float(still_fps) if still and len(frames) == 1 else _stream_fps(stream, known, still_fps)
    if len(known) == len(times) and len(times) > 0:
      t = np.asarray(times, np.float64)
      t = t - t[0]
    else:
      t = np.arange(len(frames), dtype=np.float64) / fps
  return Video(frames=np.stack(frames), fps=float(fps), times=t)


# ---------------------------------------------------------------------------------------------
# Frame sources with bounded memory.


class FrameSource:
  """Frames of a video that can be read again by index range, without holding the video.

  `scan()` decodes the whole video once, in order, yielding batches; it also records the
  number of frames and their timestamps. Afterwards `read(start, stop)` returns any range of
  frames (decoding forward from the current position, or seeking back to the keyframe before
  `start`), holding only that range. Subclasses: `InMemorySource` (a decoded `Video`),
  `VideoFileSource` (a file, decoded on demand).

  Attributes (valid after `scan`):
    num_frames: N.
    times: [N] float64 presentation times in seconds, times[0] == 0.
    fps: nominal frame rate.
    size_hw: (H, W).
  """

  num_frames: int
  times: np.ndarray
  fps: float
  size_hw: tuple[int, int]

  def scan(self, batch_size: int = 64, stop_time: float | None = None, extra_frames: int = 0):
    """Decodes the video once, in order, yielding (start, frames [b, H, W, 3] uint8, times [b]).

    Args:
      batch_size: frames per yielded batch.
      stop_time: if set, stop `extra_frames` frames after the first frame whose time is
        >= stop_time seconds (the rest of the video is never decoded; `num_frames` then counts
        the frames scanned).
      extra_frames: see `stop_time`.
    """
    raise NotImplementedError

  @staticmethod
  def _stop_index(times: np.ndarray, stop_time: float | None, extra_frames: int) -> int | None:
    """Number of frames to scan given the times seen so far, or None if not decided yet."""
    if stop_time is None:
      return None
    hit = np.flatnonzero(np.asarray(times) >= stop_time - 1e-9)
    return None if hit.size == 0 else int(hit[0]) + 1 + int(extra_frames)

  def read(self, start: int, stop: int) -> np.ndarray:
    """Frames [stop - start, H, W, 3] uint8 RGB, 0 <= start < stop <= num_frames."""
    raise NotImplementedError

  def close(self) -> None:
    """Releases the decoder."""


class InMemorySource(FrameSource):
  """A `FrameSource` over an already decoded `Video`."""

  def __init__(self, video: Video):
    self.video = video
    self.num_frames = video.num_frames
    self.times = np.asarray(video.times, np.float64)[:video.num_frames]
    self.fps = float(video.fps)
    self.size_hw = video.size_hw

  def scan(self, batch_size: int = 64, stop_time: float | None = None, extra_frames: int = 0):
    total = self.video.num_frames
    limit = self._stop_index(self.times[:total], stop_time, extra_frames)
    total = min(total, limit) if limit is not None else total
    self.num_frames = total
    for start in range(0, total, batch_size):
      stop = min(start + batch_size, total)
      yield start, self.video.frames[start:stop], self.times[start:stop]

  def read(self, start: int, stop: int) -> np.ndarray:
    if not 0 <= start < stop <= self.num_frames:
      raise IndexError(f"frames [{start}, {stop}) outside [0, {self.num_frames})")
    return self.video.frames[start:stop]


class VideoFileSource(FrameSource):
  """A `FrameSource` decoding a video file with PyAV on demand (bounded memory).

  Seeking uses the pts recorded by `scan`; files without usable pts (raw streams) are re-read
  from the start when a range lies behind the decoder (slow, but correct).
  """

  # Seek instead of decoding forward when the next range starts this many frames ahead.
  SEEK_AHEAD = 300

  def __init__(self, path: str | os.PathLike, still_fps: float = 25.0):
    self.path = pathlib.Path(path)
    self.still_fps = float(still_fps)
    self._container = None
    self._iter = None
    self._next_index = 0  # index of the frame `self._iter` yields next
    self._pts: list[int | None] = []
    self._pts_index: dict[int, int] | None = None
    self.num_frames = 0
    self.times = np.zeros(0)
    self.fps = float(still_fps)
    self.size_hw = (0, 0)
    self._scanned = False

  def _open(self):
    self.close()
    try:
      self._container = av.open(str(self.path), mode="r")
    except (av.error.FFmpegError, OSError, ValueError) as e:
      raise VideoError(f"cannot open {self.path} as a video: {e}. Check that the file is a "
                       "complete, valid video (try playing it).") from e
    if not self._container.streams.video:
      kinds = sorted({s.type for s in self._container.streams}) or ["none"]
      self.close()
      raise VideoError(f"{self.path} has no video stream (streams: {', '.join(kinds)}). Pass a "
                       "video or an image of a face, not an audio-only file.")
    stream = self._container.streams.video[0]
    stream.thread_type = "AUTO"
    self._stream = stream
    return stream

  def _frames(self):
    """Decoded frames from the container's current position (a damaged tail ends it)."""
    try:
      for frame in self._container.decode(self._stream):
        yield frame
    except av.error.FFmpegError:
      if not self._scanned and not self._pts:
        raise
      return

  def scan(self, batch_size: int = 64, stop_time: float | None = None, extra_frames: int = 0):
    if not self.path.is_file():
      raise VideoError(f"video file not found: {self.path}. Check the path (and that it is a "
                       "file, not a folder).")
    stream = self._open()
    self._pts, times = [], []
    batch, batch_times, start = [], [], 0
    shape = None
    limit = None
    try:
      for frame in self._frames():
        rgb = _frame_to_rgb(frame)
        if shape is None:
          shape = rgb.shape
        elif rgb.shape != shape:
          raise VideoError(f"{self.path} changes frame size mid-stream; re-encode it to a "
                           "constant size first.")
        self._pts.append(frame.pts)
        times.append(frame.time)
        batch.append(rgb)
        batch_times.append(frame.time)
        if limit is None and stop_time is not None and frame.time is not None:
          if frame.time - (times[0] or 0.0) >= stop_time - 1e-9:
            limit = len(times) + int(extra_frames)
        if limit is not None and len(times) >= limit:
          break
        if len(batch) == batch_size:
          yield start, np.stack(batch), self._relative(batch_times, times)
          start += len(batch)
          batch, batch_times = [], []
    except av.error.FFmpegError as e:
      raise VideoError(f"cannot decode {self.path}: {e}. The file may be truncated or use an "
                       "unsupported codec; re-encode it to H.264 MP4.") from e
    if batch:
      yield start, np.stack(batch), self._relative(batch_times, times)
    if not self._pts:
      raise VideoError(f"{self.path} contains no decodable video frames. Check the file (try "
                       "playing it) or re-encode it.")
    self.num_frames = len(self._pts)
    self.size_hw = (int(shape[0]), int(shape[1]))
    fmt = self._container.format.name
    still = (fmt in _IMAGE_DEMUXERS or fmt.endswith("_pipe")) and self.num_frames == 1
    known = [t for t in times if t is not None]
    fps = self.still_fps if still else _stream_fps(stream, known, self.still_fps)
    self.fps = float(fps)
    if len(known) == len(times):
      t = np.asarray(times, np.float64)
      self.times = t - t[0]
    else:
      self.times = np.arange(self.num_frames, dtype=np.float64) / self.fps
    pts = self._pts
    usable = all(p is not None for p in pts) and len(set(pts)) == len(pts)
    self._pts_index = {p: i for i, p in enumerate(pts)} if usable else None
    self._scanned = True
    self.close()

  def _relative(self, batch_times, all_times):
    """Batch times relative to the first frame (NaN where the decoder gave none)."""
    t0 = all_times[0] if all_times and all_times[0] is not None else 0.0
    return np.asarray([(t - t0) if t is not None else np.nan for t in batch_times], np.float64)

  def _restart(self, start: int) -> None:
    """Positions the decoder so that the next frames decoded precede or equal `start`."""
    self._open()
    self._iter = self._frames()
    self._next_index = 0
    if start == 0 or self._pts_index is None:
      return
    try:
      self._container.seek(int(self._pts[start]), stream=self._stream, backward=True,
                           any_frame=False)
    except av.error.FFmpegError:
      self._open()
      self._iter = self._frames()
      return
    self._iter = self._frames()
    self._next_index = None  # unknown until the first frame's pts is looked up

  def read(self, start: int, stop: int) -> np.ndarray:
    if not self._scanned:
      raise VideoError("call scan() before read()")
    if not 0 <= start < stop <= self.num_frames:
      raise IndexError(f"frames [{start}, {stop}) outside [0, {self.num_frames})")
    if (self._iter is None or self._next_index is None or self._next_index > start
        or start - self._next_index > self.SEEK_AHEAD):
      self._restart(start)
    out = np.empty((stop - start, *self.size_hw, 3), np.uint8)
    got = 0
    for attempt in range(2):
      for frame in self._iter:
        if self._next_index is None:  # first frame after a seek
          index = self._pts_index.get(frame.pts) if frame.pts is not None else None
          if index is None or index > start:
            break  # seek landed somewhere unexpected: fall back to decoding from the start
          self._next_index = index
        index = self._next_index
        self._next_index += 1
        if index >= start:
          out[index - start] = _frame_to_rgb(frame)
          got = index - start + 1
          if index + 1 >= stop:
            return out
      if attempt == 0:  # unexpected seek result or early end: decode from the very start
        self._open()
        self._iter = self._frames()
        self._next_index = 0
        self._pts_index = None
    raise VideoError(f"{self.path}: could only decode {got} of frames [{start}, {stop}) on a "
                     "second read; the file may be damaged, re-encode it")

  def close(self) -> None:
    self._iter = None
    if self._container is not None:
      self._container.close()
      self._container = None


def open_source(video: str | os.PathLike | Video, still_fps: float = 25.0) -> FrameSource:
  """A `FrameSource` for a decoded `Video`, an image file (decoded in memory) or a video file."""
  if isinstance(video, Video):
    return InMemorySource(video)
  path = pathlib.Path(video)
  if not path.is_file():
    raise VideoError(f"video file not found: {path}. Check the path (and that it is a file, "
                     "not a folder).")
  if path.suffix.lower() in IMAGE_SUFFIXES:
    return InMemorySource(_read_still(path, still_fps))
  return VideoFileSource(path, still_fps)
