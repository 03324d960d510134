"""Encoding H.264 + AAC MP4s with PyAV: streaming `VideoWriter` and one-shot `write_video`.

Upstream writes its output with `torchvision.io.write_video(..., video_codec="libx264",
audio_codec="aac")` (spec §5). Files are written to a hidden temporary file in the destination
folder and renamed into place only when complete, so an interrupted run never leaves a partial
output at the destination.

Odd frame sizes: H.264 in 4:2:0 cannot represent an odd width or height (its cropping unit is 2
pixels, and libx264 refuses odd sizes in yuv420p); `odd_size="yuv444p"` keeps the exact size in
4:4:4, `odd_size="pad"` replicates the last row/column up to even dimensions and keeps yuv420p.
"""

from __future__ import annotations

import fractions
import os
import pathlib
import uuid
from typing import Literal

import av
import numpy as np

from diff2lip_jax.media.video import VideoError

__all__ = ["VideoWriter", "write_video", "fit_audio", "is_constant_rate", "VFR_TIME_BASE"]


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
  audio = np.asarray(audio, np.float32)
  if not np.all(np.isfinite(audio)):
    raise VideoError("audio contains NaN or inf samples")
  if audio.size and (audio.min() < -1.0 or audio.max() > 1.0):
    audio = np.clip(audio, -1.0, 1.0)
  return audio


# Time base of variable-frame-rate output: 90 kHz, the MPEG convention (11 us resolution).
VFR_TIME_BASE = fractions.Fraction(1, 90000)


def is_constant_rate(times: np.ndarray, fps: float, tolerance: float = 1e-3) -> bool:
  """True if `times[i] == i / fps` within `tolerance` seconds for every frame."""
  times = np.asarray(times, np.float64)
  return bool(np.all(np.abs(times - np.arange(len(times)) / float(fps)) <= tolerance))


class VideoWriter:
  """Streaming H.264 (+ mono AAC) writer: frames are encoded as they come, nothing is held.

  Use as a context manager; the file is written to a hidden temporary file in the destination
  folder and renamed over `path` only when the `with` block ends without an exception (an
  exception, or `abort()`, removes it and leaves `path` untouched).

    with VideoWriter(out, fps=25, audio=wav) as w:
      for chunk in chunks:
        w.write(chunk)                 # [n, H, W, 3] uint8, frame i at i / fps
        # or w.write(chunk, times)     # [n] seconds: variable frame rate, 90 kHz time base

  Args:
    path: output file (`.mp4` recommended); missing parent folders are created.
    fps: nominal frame rate (float or exact `fractions.Fraction`); constant-rate frames get pts
      i/fps in time base 1/fps.
    audio: None, or [S] float mono samples in [-1, 1] at `sample_rate`, written in full (trim or
      pad it to the video's duration first, as `write_video` does).
    sample_rate, crf, preset, audio_bitrate, odd_size: see `write_video`.
  """

  def __init__(self, path: str | os.PathLike, fps: float | fractions.Fraction,
               audio: np.ndarray | None = None, sample_rate: int = 16000, *, crf: int = 18,
               preset: str = "medium", audio_bitrate: int = 128_000,
               odd_size: Literal["yuv444p", "pad"] = "yuv444p"):
    if audio is not None:
      audio = _check_audio(audio)
      if int(sample_rate) <= 0:
        raise VideoError(f"sample_rate must be positive, got {sample_rate}")
    if not np.isfinite(float(fps)) or float(fps) <= 0:
      raise VideoError(f"fps must be a positive number, got {fps}")
    if odd_size not in ("yuv444p", "pad"):
      raise VideoError(f'odd_size must be "yuv444p" or "pad", got {odd_size!r}')
    self.path = pathlib.Path(path)
    self.rate = _fps_fraction(fps)
    self.audio = audio
    self.sample_rate = int(sample_rate)
    self.crf, self.preset, self.audio_bitrate, self.odd_size = crf, preset, audio_bitrate, odd_size
    self.num_written = 0
    self._container = None
    self._vstream = None
    self._astream = None
    self._audio_pos = 0
    self._pad = (0, 0)
    self._vfr: bool | None = None
    self._last_pts = -1
    self._closed = False
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self._tmp = self.path.with_name(f".{self.path.stem}.{uuid.uuid4().hex[:8]}.part"
                                    f"{self.path.suffix}")

  def __enter__(self) -> "VideoWriter":
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.close()
    else:
      self.abort()

  def _open(self, h: int, w: int, vfr: bool) -> None:
    try:
      self._container = av.open(str(self._tmp), mode="w")
    except (av.error.FFmpegError, ValueError) as e:
      raise VideoError(f"cannot create {self.path}: {e}. Use a known video suffix such as .mp4 "
                       "and a writable folder.") from e
    pix_fmt = "yuv420p"
    if h % 2 or w % 2:
      if self.odd_size == "pad":
        self._pad = (h % 2, w % 2)
        h, w = h + h % 2, w + w % 2
      else:
        pix_fmt = "yuv444p"
    vstream = self._container.add_stream("libx264", rate=self.rate)
    vstream.width, vstream.height, vstream.pix_fmt = w, h, pix_fmt
    vstream.options = {"crf": str(int(self.crf)), "preset": self.preset}
    self._video_tb = VFR_TIME_BASE if vfr else fractions.Fraction(1) / self.rate
    if vfr:
      vstream.time_base = VFR_TIME_BASE
      vstream.codec_context.time_base = VFR_TIME_BASE
    self._vstream = vstream
    self._vfr = vfr
    if self.audio is not None:
      astream = self._container.add_stream("aac", rate=self.sample_rate)
      astream.layout = "mono"
      astream.bit_rate = int(self.audio_bitrate)
      self._astream = astream

  def _encode_audio_until(self, end: int) -> None:
    end = min(end, self.audio.shape[0])
    chunk = 1024
    while self._audio_pos < end:
      stop = min(self._audio_pos + chunk, end)
      af = av.AudioFrame.from_ndarray(self.audio[None, self._audio_pos:stop], format="flt",
                                      layout="mono")
      af.sample_rate = self.sample_rate
      af.pts = self._audio_pos
      af.time_base = fractions.Fraction(1, self.sample_rate)
      self._container.mux(self._astream.encode(af))
      self._audio_pos = stop

  def write(self, frames: np.ndarray, times: np.ndarray | None = None) -> None:
    """Encodes frames.

    Args:
      frames: [n, H, W, 3] uint8 RGB (the same size in every call).
      times: None (frame i of the file at i / fps), or [n] float presentation times in seconds,
        increasing (variable frame rate). Use the same convention in every call.
    """
    if self._closed:
      raise VideoError("VideoWriter is closed")
    frames = _check_frames(frames) if len(frames) else np.asarray(frames)
    if len(frames) == 0:
      return
    vfr = times is not None
    if self._container is None:
      self._open(frames.shape[1], frames.shape[2], vfr)
    elif vfr != self._vfr:
      raise VideoError("mixing frames with and without timestamps in one VideoWriter")
    if vfr:
      times = np.asarray(times, np.float64).reshape(-1)
      if len(times) != len(frames):
        raise VideoError(f"{len(frames)} frames but {len(times)} timestamps")
    if self._pad != (0, 0):
      frames = np.pad(frames, ((0, 0), (0, self._pad[0]), (0, self._pad[1]), (0, 0)), mode="edge")
    for i in range(len(frames)):
      if vfr:
        pts = int(round(times[i] / VFR_TIME_BASE))
        if pts <= self._last_pts:
          raise VideoError(f"timestamps must increase (frame {self.num_written}: {times[i]} s)")
        end = times[i]
      else:
        pts = self.num_written
        end = (self.num_written + 1) / self.rate
      vf = av.VideoFrame.from_ndarray(frames[i], format="rgb24")
      vf.pts = pts
      vf.time_base = self._video_tb
      self._container.mux(self._vstream.encode(vf))
      self._last_pts = pts
      self.num_written += 1
      if self._astream is not None:  # interleave: audio up to this frame's time
        self._encode_audio_until(int(round(float(end) * self.sample_rate)))

  def close(self) -> None:
    """Flushes the encoders and moves the file into place."""
    if self._closed:
      return
    try:
      if self._container is None:
        raise VideoError(f"no frames were written to {self.path}")
      if self._astream is not None:
        self._encode_audio_until(self.audio.shape[0])
        self._container.mux(self._astream.encode(None))
      self._container.mux(self._vstream.encode(None))
      self._container.close()
      self._container = None
      os.replace(self._tmp, self.path)
    except av.error.FFmpegError as e:
      self.abort()
      raise VideoError(f"encoding {self.path} failed: {e}") from e
    except BaseException:
      self.abort()
      raise
    self._closed = True

  def abort(self) -> None:
    """Discards the partial file; `path` is left as it was."""
    self._closed = True
    if self._container is not None:
      try:
        self._container.close()
      except Exception:  # pylint: disable=broad-except
        pass
      self._container = None
    if self._tmp.exists():
      self._tmp.unlink()


def write_video(path: str | os.PathLike,
                frames: np.ndarray,
                fps: float | fractions.Fraction,
                audio: np.ndarray | None = None,
                sample_rate: int = 16000,
                *,
                times: np.ndarray | None = None,
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
      samples, i.e. to the video duration (upstream trims to int(N / 25 * 16000)); with
      `times`, to `times[-1]` plus one frame at `fps`.
    sample_rate: audio sample rate in Hz (upstream: 16000).
    times: None, or [N] increasing presentation times in seconds (variable frame rate, kept
      to 1/90000 s); `fps` is then only the nominal rate.
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
  if not np.isfinite(float(fps)) or float(fps) <= 0:
    raise VideoError(f"fps must be a positive number, got {fps}")
  rate = _fps_fraction(fps)
  n = frames.shape[0]
  if audio is not None:
    if times is None:
      num_samples = int(round(n * int(sample_rate) / rate))
    else:
      num_samples = int(round((float(np.asarray(times)[-1]) + 1 / float(rate)) * int(sample_rate)))
    audio = fit_audio(audio, num_samples)
  with VideoWriter(path, rate, audio, sample_rate, crf=crf, preset=preset,
                   audio_bitrate=audio_bitrate, odd_size=odd_size) as writer:
    writer.write(frames, times)


def fit_audio(audio: np.ndarray, num_samples: int) -> np.ndarray:
  """[S] audio trimmed, or zero-padded at the end, to `num_samples` samples."""
  audio = np.asarray(audio)
  if audio.shape[0] >= num_samples:
    return audio[:num_samples]
  return np.pad(audio, (0, num_samples - audio.shape[0]))
