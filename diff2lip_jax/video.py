"""Video and still-image I/O with PyAV: decode to RGB frames, write H.264 + AAC MP4s.

Upstream Diff2Lip (`generate.py`, spec §4.5 and §5) shells out to ffmpeg to dump frames
as JPEGs (`ffmpeg -i video -vf fps=25 -q:v 2 ...`), reads them with cv2, and writes the
result with `torchvision.io.write_video(..., video_codec='libx264', audio_codec='aac')`.
This module does the same jobs in-process through PyAV (no subprocesses, no JPEG
round trip):

* `read_video` decodes every frame of any PyAV-readable file to uint8 RGB, applying
  the stream's display rotation the way the ffmpeg CLI does (autorotate). Still images
  (png/jpg/...) are read with Pillow (EXIF orientation applied, as `cv2.imread` does) and
  give one frame. No frame-rate resampling is done here; `Video.times` holds each frame's
  presentation time so a caller can resample to 25 fps.
* `write_video` encodes libx264 (yuv420p; see below for odd sizes) plus mono AAC into a
  temporary file in the destination folder and renames it into place only on success.

Odd frame sizes: H.264 in 4:2:0 cannot represent an odd width or height (its cropping
unit is 2 pixels, and libx264 refuses odd sizes in yuv420p). Upstream's torchvision
writer simply fails there. By default (`odd_size="yuv444p"`) such frames are encoded in
4:4:4 (High 4:4:4 Predictive profile), which keeps the exact input size but is not
played by some browsers and QuickTime. `odd_size="pad"` instead replicates the last
row/column up to even dimensions and keeps yuv420p (the output is then 1 pixel larger).
"""

from __future__ import annotations

import dataclasses
import fractions
import os
import pathlib
import uuid
from typing import Literal

import av
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["VideoError", "Video", "read_video", "write_video", "IMAGE_SUFFIXES"]

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
    fps = None
    if still and len(frames) == 1:
      fps = float(still_fps)
    else:
      for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0:
          fps = float(rate)
          break
    known = [t for t in times if t is not None]
    if fps is None:
      if len(known) >= 2 and known[-1] > known[0]:
        fps = (len(known) - 1) / (known[-1] - known[0])
      else:
        fps = float(still_fps)
    if len(known) == len(times) and len(times) > 0:
      t = np.asarray(times, np.float64)
      t = t - t[0]
    else:
      t = np.arange(len(frames), dtype=np.float64) / fps
  return Video(frames=np.stack(frames), fps=float(fps), times=t)


def _fps_fraction(fps: float | fractions.Fraction) -> fractions.Fraction:
  """Frame rate as an exact fraction (29.97002997 -> 30000/1001, 25.0 -> 25/1)."""
  if isinstance(fps, fractions.Fraction):
    return fps
  return fractions.Fraction(float(fps)).limit_denominator(1001)


def _check_frames(frames: np.ndarray) -> np.ndarray:
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
    raise VideoError(f"frames must be [N, H, W, 3] with N >= 1, got shape {frames.shape}")
  if frames.dtype != np.uint8:
    raise VideoError(f"frames must be uint8 RGB, got dtype {frames.dtype}; convert with "
                     "np.clip(x, 0, 255).astype(np.uint8)")
  if frames.shape[1] < 2 or frames.shape[2] < 2:
    raise VideoError(f"frames are too small to encode: {frames.shape[1]}x{frames.shape[2]}")
  return frames


def _check_audio(audio: np.ndarray) -> np.ndarray:
  audio = np.asarray(audio)
  if audio.ndim == 2 and 1 in audio.shape:
    audio = audio.reshape(-1)
  if audio.ndim != 1:
    raise VideoError(f"audio must be mono [S] float32, got shape {audio.shape}; mix it down "
                     "first, e.g. audio.mean(axis=-1)")
  if not np.issubdtype(audio.dtype, np.floating):
    raise VideoError(f"audio must be float in [-1, 1], got dtype {audio.dtype}; for int16 PCM "
                     "use audio.astype(np.float32) / 32768")
  audio = audio.astype(np.float32)
  if not np.all(np.isfinite(audio)):
    raise VideoError("audio contains NaN or inf samples")
  return np.clip(audio, -1.0, 1.0)


def write_video(path: str | os.PathLike,
                frames: np.ndarray,
                fps: float | fractions.Fraction,
                audio: np.ndarray | None = None,
                sample_rate: int = 16000,
                *,
                crf: int = 18,
                preset: str = "medium",
                audio_bitrate: int = 128_000,
                odd_size: Literal["yuv444p", "pad"] = "yuv444p") -> None:
  """Writes frames (and optional mono audio) to an H.264/AAC file, atomically.

  The container is chosen from the suffix of `path` (`.mp4` recommended). The file is
  first written to a hidden temporary file in the same folder and moved over `path` with
  `os.replace` only when encoding finished; on any error the temporary file is removed
  and `path` is left untouched. Missing parent folders are created.

  Args:
    path: output file.
    frames: [N, H, W, 3] uint8 RGB.
    fps: frame rate (float, converted to a fraction with denominator <= 1001, or an exact
      `fractions.Fraction`). Frame i gets pts i/fps.
    audio: None (silent video) or [S] float mono samples in [-1, 1] (clipped) at
      `sample_rate` Hz. It is trimmed or zero-padded to round(N / fps * sample_rate)
      samples, i.e. to the video duration (upstream trims to int(N / 25 * 16000)).
    sample_rate: audio sample rate in Hz (upstream: 16000).
    crf: libx264 constant rate factor (lower = better; upstream's torchvision writer uses
      libx264's default 23).
    preset: libx264 preset.
    audio_bitrate: AAC bit rate in bit/s.
    odd_size: how an odd width or height is encoded (see module docstring): "yuv444p"
      keeps the exact size, "pad" pads to even and stays yuv420p.

  Raises:
    VideoError: bad arguments, or the encoder/muxer failed (nothing is left at `path`).
  """
  frames = _check_frames(frames)
  if audio is not None:
    audio = _check_audio(audio)
    if int(sample_rate) <= 0:
      raise VideoError(f"sample_rate must be positive, got {sample_rate}")
  if not np.isfinite(float(fps)) or float(fps) <= 0:
    raise VideoError(f"fps must be a positive number, got {fps}")
  rate = _fps_fraction(fps)
  if odd_size not in ("yuv444p", "pad"):
    raise VideoError(f'odd_size must be "yuv444p" or "pad", got {odd_size!r}')

  n, h, w, _ = frames.shape
  pix_fmt = "yuv420p"
  if h % 2 or w % 2:
    if odd_size == "pad":
      frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
      h, w = frames.shape[1:3]
    else:
      pix_fmt = "yuv444p"

  if audio is not None:
    num_samples = int(round(n * sample_rate / rate))
    if audio.shape[0] >= num_samples:
      audio = audio[:num_samples]
    else:
      audio = np.pad(audio, (0, num_samples - audio.shape[0]))

  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.part{path.suffix}")
  try:
    try:
      container = av.open(str(tmp), mode="w")
    except (av.error.FFmpegError, ValueError) as e:
      raise VideoError(f"cannot create {path}: {e}. Use a known video suffix such as .mp4 "
                       "and a writable folder.") from e
    with container:
      vstream = container.add_stream("libx264", rate=rate)
      vstream.width = w
      vstream.height = h
      vstream.pix_fmt = pix_fmt
      vstream.options = {"crf": str(int(crf)), "preset": preset}
      video_tb = fractions.Fraction(1) / rate

      astream = None
      audio_pos = 0
      if audio is not None:
        astream = container.add_stream("aac", rate=int(sample_rate))
        astream.layout = "mono"
        astream.bit_rate = int(audio_bitrate)
        audio_tb = fractions.Fraction(1, int(sample_rate))

      def encode_audio_until(end: int) -> None:
        nonlocal audio_pos
        chunk = 1024
        while audio_pos < end:
          stop = min(audio_pos + chunk, end)
          af = av.AudioFrame.from_ndarray(audio[None, audio_pos:stop], format="flt", layout="mono")
          af.sample_rate = int(sample_rate)
          af.pts = audio_pos
          af.time_base = audio_tb
          container.mux(astream.encode(af))
          audio_pos = stop

      for i in range(n):
        vf = av.VideoFrame.from_ndarray(frames[i], format="rgb24")
        vf.pts = i
        vf.time_base = video_tb
        container.mux(vstream.encode(vf))
        if astream is not None:
          # Interleave: audio up to the end of this frame.
          encode_audio_until(min(audio.shape[0], int(round((i + 1) * sample_rate / rate))))
      if astream is not None:
        encode_audio_until(audio.shape[0])
        container.mux(astream.encode(None))
      container.mux(vstream.encode(None))
    os.replace(tmp, path)
  except av.error.FFmpegError as e:
    raise VideoError(f"encoding {path} failed: {e}") from e
  finally:
    if tmp.exists():
      tmp.unlink()
