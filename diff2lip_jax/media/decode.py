"""Decoding building blocks shared by `video` (read_video, open_source) and `source` (FrameSource).

* `frame_to_rgb`: a decoded frame as players show it: [H, W, 3] uint8 RGB, converted with the
  frame's own colour matrix and range (BT.601 when untagged, as ffmpeg), and the stream's
  display matrix applied (a phone video
  tagged "rotate 90" comes out upright, as `ffmpeg -i` autorotates it).
* `PresentationClock`: presentation times of decoded frames. Decoders return frames in
  presentation order, but some containers stamp them in decode order (packed B-frame MPEG-4
  Part 2 in AVI, as DivX/XviD write it: stamps 1, 3, 2, 5, 4, ...); the stamps are sorted within
  a window of `REORDER_WINDOW` frames, which restores what players show.
* `ColorInfo`: a stream's colour tags (primaries, transfer, matrix, range), carried from the
  input to the output (`encode.VideoWriter(color=...)`); BT.709 limited range where unknown
  (the writer converts with the matrix it tags, so the RGB frames are shown as decoded).
* `read_still`: images (png/jpg/...) with Pillow: EXIF orientation applied, CMYK, palette,
  grey, alpha and 16-bit images converted to 8-bit RGB.
"""

from __future__ import annotations

import dataclasses
import fractions
import heapq
import logging
import pathlib
from typing import Any

import av
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["VideoError", "Video", "ColorInfo", "PresentationClock", "frame_to_rgb",
           "stream_fps", "read_still", "IMAGE_SUFFIXES", "IMAGE_DEMUXERS", "TIME_BASE",
           "REORDER_WINDOW"]

# Suffixes read as a single still frame with Pillow.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})

# PyAV/ffmpeg demuxers that mean "a single image" (used when the suffix is unknown).
IMAGE_DEMUXERS = frozenset({"image2", "image2pipe"})

# Finest time step kept for frame times: 1/90000 s, the MPEG convention (and the time base of
# variable-frame-rate output). Two frames closer than this count as the same time.
TIME_BASE = fractions.Fraction(1, 90000)

# Frames whose time stamps are sorted together (decode-order stamps are at most a GOP's
# B-frame run, 1-3 frames, out of place).
REORDER_WINDOW = 16


class VideoError(ValueError):
  """A video/image file cannot be read or written; the message says what to do."""


@dataclasses.dataclass
class Video:
  """Decoded frames of a video or still image.

  Attributes:
    frames: [N, H, W, 3] uint8 RGB, upright (display matrix applied).
    fps: frames per second (the stream's average rate; `still_fps` for an image).
    times: [N] float64 presentation time of each frame in seconds, increasing, relative to
      the first frame (so `times[0] == 0`). For constant-frame-rate input this is
      `arange(N) / fps`.
    color: the source's colour tags (`ColorInfo()`, BT.709, when unknown).
  """

  frames: np.ndarray
  fps: float
  times: np.ndarray
  color: "ColorInfo" = dataclasses.field(default_factory=lambda: ColorInfo())

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


# --- colour -----------------------------------------------------------------------------------

# AVColorSpace values swscale converts with (BT.709, FCC, BT.470BG, SMPTE 170M, SMPTE 240M,
# BT.2020 non-constant and constant luminance); other matrices are treated as BT.709.
_SPACES = {1: 1, 4: 4, 5: 5, 6: 6, 7: 7, 9: 9, 10: 9}
_SWS_CS = {1: 1, 4: 4, 5: 5, 6: 5, 7: 7, 9: 9}  # AVColorSpace -> swscale's SWS_CS_*
_BT709 = 1
_RANGE_MPEG, _RANGE_JPEG = 1, 2
_UNKNOWN = (0, 2, 3)  # reserved0 / unspecified / reserved


@dataclasses.dataclass(frozen=True)
class ColorInfo:
  """Colour tags of a video stream, as ffmpeg's AVCOL_* integers.

  Attributes:
    primaries: AVColorPrimaries (1 = BT.709, 9 = BT.2020, ...).
    trc: AVColorTransferCharacteristic (1 = BT.709, 16 = PQ, 18 = HLG, ...).
    space: AVColorSpace, the YUV matrix (1 = BT.709, 5/6 = BT.601, 9 = BT.2020, ...); always one
      that swscale converts with.
    range: AVColorRange, 1 = limited ("tv", 16-235), 2 = full ("pc", 0-255).

  The default is BT.709 limited range, what is written when the source's tags are unknown.
  """

  primaries: int = _BT709
  trc: int = _BT709
  space: int = _BT709
  range: int = _RANGE_MPEG

  def __post_init__(self):
    if self.space not in _SWS_CS or self.range not in (_RANGE_MPEG, _RANGE_JPEG):
      raise VideoError(f"unsupported colour matrix/range {self.space}/{self.range}: the matrix "
                       f"must be one of {sorted(_SWS_CS)} (AVColorSpace), the range 1 or 2")

  @property
  def sws_space(self) -> int:
    """`space` as swscale's SWS_CS_* constant (what `VideoFrame.reformat` takes)."""
    return _SWS_CS[self.space]

  @classmethod
  def from_frame(cls, frame: av.VideoFrame) -> "ColorInfo":
    """The tags of a decoded frame; unknown or unspecified ones become BT.709 / limited."""
    def tag(value):
      value = int(value)
      return _BT709 if value in _UNKNOWN else value
    fmt = frame.format.name
    rgb = fmt.startswith(("gbr", "rgb", "bgr", "argb", "abgr", "rgba", "bgra", "gray", "ya"))
    full = int(frame.color_range) == _RANGE_JPEG or fmt.startswith("yuvj") or rgb
    return cls(primaries=tag(frame.color_primaries), trc=tag(frame.color_trc),
               space=_SPACES.get(int(frame.colorspace), _BT709),
               range=_RANGE_JPEG if full else _RANGE_MPEG)


def frame_to_rgb(frame: av.VideoFrame) -> np.ndarray:
  """A decoded frame as [H', W', 3] uint8 RGB, the way ffmpeg shows it.

  YUV is converted with the frame's own matrix and range; an untagged matrix is read as
  BT.601 (what ffmpeg's swscale assumes, and what upstream's ffmpeg -> JPEG -> cv2 path
  gave). The display matrix's rotation (`frame.rotation`, counter-clockwise degrees, a multiple
  of 90) is applied as ffmpeg's autorotate does, so (H', W') is the size as displayed. Flips
  and other angles are ignored.
  """
  kwargs = {}
  if not frame.format.name.startswith(("gbr", "rgb", "bgr", "gray", "pal")):
    space = _SWS_CS.get(_SPACES.get(int(frame.colorspace), 5), 5)
    full = int(frame.color_range) == _RANGE_JPEG or frame.format.name.startswith("yuvj")
    kwargs = dict(src_colorspace=space, src_color_range=_RANGE_JPEG if full else _RANGE_MPEG)
  rgb = frame.reformat(format="rgb24", **kwargs).to_ndarray()
  rotation = int(round(frame.rotation or 0))
  if rotation % 90 == 0 and rotation % 360 != 0:
    rgb = np.ascontiguousarray(np.rot90(rgb, k=rotation // 90))
  return rgb


# --- timing -----------------------------------------------------------------------------------


def stream_fps(stream: Any, known_times: list[float], default: float) -> float:
  """Frame rate of a video stream: its average, guessed or base rate (the first positive one),
  else the mean rate of the decoded timestamps `known_times` (seconds), else `default`."""
  for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
    if rate is not None and rate > 0:
      return float(rate)
  if len(known_times) >= 2 and known_times[-1] > known_times[0]:
    return (len(known_times) - 1) / (known_times[-1] - known_times[0])
  return float(default)


def frame_stamp(frame: av.VideoFrame) -> float | None:
  """A decoded frame's time stamp in seconds: its pts, else its packet's dts, else None."""
  if frame.pts is not None:
    return frame.time
  if frame.dts is not None and frame.time_base is not None:
    return float(frame.dts * frame.time_base)
  return None


class PresentationClock:
  """Assigns presentation times to frames that arrive in presentation order.

  `push(stamp)` takes each frame's stamp (seconds or None) in decoding output order; `pop()`
  returns the next frame's time once `window` later stamps are known (`flush()` at the end):
  the smallest stamp pending, so stamps given in decode order come out sorted. `finish()`
  checks the result and returns the final [N] times relative to the first frame.
  """

  def __init__(self, fps: float, window: int = REORDER_WINDOW):
    self.fps = float(fps)
    self.window = int(window)
    self._heap: list[float] = []
    self._raw: list[float | None] = []
    self._out: list[float] = []
    self._t0: float | None = None
    self._missing = False

  def push(self, stamp: float | None) -> None:
    """Adds the next decoded frame's stamp (seconds, or None when the decoder gave none)."""
    self._raw.append(stamp)
    if stamp is not None:
      heapq.heappush(self._heap, float(stamp))

  @property
  def pending(self) -> int:
    """Frames pushed but not popped."""
    return len(self._raw) - len(self._out)

  def ready(self) -> bool:
    """True if `pop()` may be called before the end of the stream."""
    return self.pending > self.window

  def pop(self) -> float:
    """The next frame's time in seconds relative to the first frame (one frame at the
    nominal rate after the previous one where stamps are missing)."""
    if self._heap:
      stamp = heapq.heappop(self._heap)
      if self._t0 is None:
        self._t0 = stamp - (self._out[-1] + 1 / self.fps if self._out else 0.0)
      t = stamp - self._t0
    else:
      self._missing = True
      t = (len(self._out) / self.fps if self._t0 is None  # no stamp yet: i / fps exactly
           else self._out[-1] + 1 / self.fps)
    self._out.append(t)
    return t

  @property
  def stamps(self) -> list[float]:
    """The known stamps pushed so far, in decoding output order (seconds)."""
    return [s for s in self._raw if s is not None]

  @property
  def reordered(self) -> bool:
    """True if the stamps were not already in presentation order."""
    known = self.stamps
    return any(b < a for a, b in zip(known, known[1:]))

  def finish(self, source: str = "video") -> np.ndarray:
    """[N] float64 final times (relative to the first frame, strictly increasing).

    Missing stamps, or stamps that repeat (at 1/90000 s) or stay out of order beyond the
    window, cannot be trusted: the frames are then timed at the nominal rate, i / fps (as
    ffmpeg does for raw streams), with a warning.
    """
    while self.pending:
      self.pop()
    t = np.asarray(self._out, np.float64)
    ticks = np.round(t / float(TIME_BASE))
    if t.size and not self._missing and np.all(np.diff(ticks) > 0):
      return t - t[0]
    if not self.stamps:  # a raw stream (.h264, .m4v): no time stamps to expect
      logging.info("%s: no time stamps; frames timed at %.3f fps", source, self.fps)
    else:
      reason = ("some frames have no time stamp" if self._missing
                else "time stamps repeat or go back")
      logging.warning("%s: %s; frames timed at the nominal %.3f fps instead", source, reason,
                      self.fps)
    return np.arange(t.size, dtype=np.float64) / self.fps


# --- stills -----------------------------------------------------------------------------------


def _still_rgb(im: Image.Image) -> np.ndarray:
  """[H, W, 3] uint8 RGB of any Pillow image (EXIF orientation applied; 16-bit scaled)."""
  im = ImageOps.exif_transpose(im)
  if im.mode in ("I;16", "I;16B", "I;16L", "I"):
    grey = np.asarray(im).astype(np.float64)
    scale = 257.0 if grey.max(initial=0) > 255 or im.mode.startswith("I;16") else 1.0
    grey = np.clip(np.round(grey / scale), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)
  if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
    im = im.convert("RGBA")  # transparent pixels keep their colour (alpha dropped)
  return np.asarray(im.convert("RGB"), dtype=np.uint8)


def read_still(path: pathlib.Path, still_fps: float) -> Video:
  """Reads an image file with Pillow as a one-frame `Video` (fps `still_fps`, times [0]).

  Raises:
    VideoError: the file is not an image Pillow can read.
  """
  try:
    with Image.open(path) as im:
      rgb = _still_rgb(im)
  except (UnidentifiedImageError, OSError, ValueError) as e:
    raise VideoError(
        f"cannot read image {path}: {e}. Check that it is a valid PNG/JPEG image "
        "(re-save it with an image editor if unsure).") from e
  return Video(frames=rgb[None].copy(), fps=float(still_fps), times=np.zeros(1, np.float64))
