"""Frame sources with bounded memory: a video read twice, once to scan, then by index range.

`FrameSource.scan` is the first pass and does every check that can fail on the input (a video
stream exists, frames decode, the size is constant, times increase) before any expensive work
starts; `read(start, stop)` is the second pass. Frames are upright RGB, in presentation order,
with presentation times (see `decode`). Opened through `video.open_source`.
"""

from __future__ import annotations

import collections
import os
import pathlib

import av
import numpy as np

from diff2lip_jax.media import decode
from diff2lip_jax.media.decode import ColorInfo, Video, VideoError

__all__ = ["FrameSource", "InMemorySource", "VideoFileSource"]


class FrameSource:
  """Frames of a video that can be read again by index range, without holding the video.

  `scan()` decodes the whole video once, in presentation order, yielding batches; it also
  records the number of frames and their times. Afterwards `read(start, stop)` returns any
  range of frames (decoding forward from the current position, or seeking back to the
  keyframe before `start`), holding only that range. Subclasses: `InMemorySource` (a decoded
  `Video`), `VideoFileSource` (a file, decoded on demand).

  Attributes (valid after `scan`):
    num_frames: N.
    times: [N] float64 presentation times in seconds, strictly increasing, times[0] == 0.
    fps: nominal frame rate.
    size_hw: (H, W) as displayed (rotation applied).
    color: `ColorInfo`, the source's colour tags (pass it to `encode.VideoWriter(color=)`).
  """

  num_frames: int
  times: np.ndarray
  fps: float
  size_hw: tuple[int, int]
  color: ColorInfo

  def scan(self, batch_size: int = 64, stop_time: float | None = None, extra_frames: int = 0,
           max_frames: int | None = None):
    """Decodes the video once, in order, yielding (start, frames [b, H, W, 3] uint8, times [b]).

    Args:
      batch_size: frames per yielded batch.
      stop_time: if set, stop `extra_frames` frames after the first frame whose time is
        >= stop_time seconds (the rest of the video is never decoded; `num_frames` then counts
        the frames scanned).
      extra_frames: see `stop_time`.
      max_frames: if set, stop after this many frames.

    Raises:
      VideoError: missing file, no video stream, nothing decodable, a size change mid-stream.
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
    self.color = video.color

  def scan(self, batch_size: int = 64, stop_time: float | None = None, extra_frames: int = 0,
           max_frames: int | None = None):
    total = self.video.num_frames
    limit = self._stop_index(self.times[:total], stop_time, extra_frames)
    total = min(total, limit) if limit is not None else total
    total = min(total, max_frames) if max_frames is not None else total
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

  Seeking uses the pts recorded by `scan`; files without usable pts (raw streams), and
  streams whose stamps came in decode order (seeking into them is not frame-exact), are
  re-read from the start when a range lies behind the decoder (slower, but correct).
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
    self.color = ColorInfo()
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

  def scan(self, batch_size: int = 64, stop_time: float | None = None, extra_frames: int = 0,
           max_frames: int | None = None):
    if not self.path.is_file():
      raise VideoError(f"video file not found: {self.path}. Check the path (and that it is a "
                       "file, not a folder).")
    stream = self._open()
    fmt = self._container.format.name
    maybe_still = fmt in decode.IMAGE_DEMUXERS or fmt.endswith("_pipe")
    clock = decode.PresentationClock(decode.stream_fps(stream, [], self.still_fps))
    self._pts = []
    pending: collections.deque = collections.deque()  # decoded frames awaiting their time
    ready: list[np.ndarray] = []
    ready_times: list[float] = []
    start, count, limit, shape = 0, 0, max_frames, None

    def take_ready():
      nonlocal limit, count
      frame = pending.popleft()
      t = clock.pop()
      if limit is None or count < limit:
        ready.append(frame)
        ready_times.append(t)
        count += 1
        if limit is None and stop_time is not None and t >= stop_time - 1e-9:
          limit = count + int(extra_frames)
          limit = min(limit, max_frames) if max_frames is not None else limit

    try:
      for frame in self._frames():
        if shape is None:
          self.color = ColorInfo.from_frame(frame)
        rgb = decode.frame_to_rgb(frame)
        if shape is None:
          shape = rgb.shape
        elif rgb.shape != shape:
          raise VideoError(f"{self.path} changes frame size mid-stream ({shape[1]}x{shape[0]} "
                           f"-> {rgb.shape[1]}x{rgb.shape[0]} at frame {len(self._pts)}); "
                           "re-encode it to a constant size first.")
        self._pts.append(frame.pts)
        clock.push(decode.frame_stamp(frame))
        pending.append(rgb)
        while clock.ready():
          take_ready()
        while len(ready) >= batch_size:
          yield start, np.stack(ready[:batch_size]), np.asarray(ready_times[:batch_size])
          start += batch_size
          del ready[:batch_size], ready_times[:batch_size]
        if limit is not None and count >= limit:
          break
    except av.error.FFmpegError as e:
      raise VideoError(f"cannot decode {self.path}: {e}. The file may be truncated or use an "
                       "unsupported codec; re-encode it to H.264 MP4.") from e
    while pending:
      take_ready()
    for a in range(0, len(ready), batch_size):
      yield start + a, np.stack(ready[a:a + batch_size]), np.asarray(ready_times[a:a + batch_size])
    if not self._pts:
      raise VideoError(f"{self.path} contains no decodable video frames. Check the file (try "
                       "playing it) or re-encode it.")
    self.num_frames = count
    self.size_hw = (int(shape[0]), int(shape[1]))
    if maybe_still and len(self._pts) == 1:
      self.fps = self.still_fps
    else:
      self.fps = float(decode.stream_fps(stream, sorted(clock.stamps), self.still_fps))
    clock.fps = self.fps
    self.times = clock.finish(str(self.path))[:count]
    pts = self._pts
    usable = (all(p is not None for p in pts) and len(set(pts)) == len(pts)
              and not clock.reordered)
    self._pts_index = {p: i for i, p in enumerate(pts)} if usable else None
    self._scanned = True
    self.close()

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
          rgb = decode.frame_to_rgb(frame)
          if rgb.shape[:2] != self.size_hw:
            raise VideoError(f"{self.path}: frame {index} decoded at another size on the "
                             "second read; the file may be damaged, re-encode it")
          out[index - start] = rgb
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
