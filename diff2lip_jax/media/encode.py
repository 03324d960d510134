"""Encoding player-ready H.264 MP4s with PyAV: streaming `VideoWriter` and one-shot `write_video`.

Upstream writes its output with `torchvision.io.write_video(..., video_codec="libx264",
audio_codec="aac")` (spec §5). Here the output is made to play everywhere (browsers, QuickTime,
phones):

* `yuv420p` H.264 by default (`pix_fmt` for others, e.g. "yuv444p"), with `crf` / `preset`.
  4:2:0 cannot represent an odd width or height: such frames get their last row / column
  repeated once (one edge pixel of padding, so 549x343 is written as 550x344);
  `odd_size="yuv444p"` instead keeps the exact size in 4:4:4 (which few players play).
* the `moov` index at the front (`+faststart`): playback starts before the download ends.
* colour tags (primaries, transfer, matrix) from `color` (a source's `FrameSource.color` /
  `Video.color`), BT.709 when not given, always limited range (full range would make it
  yuvj420p); the RGB frames are converted to YUV with that same matrix and range, so they are
  shown as they were decoded.
* frames are upright as given: no rotation metadata is written.
* sound: a [S] float mono array (`audio`, AAC), or the driving audio file's own track
  (`source_audio`, see `audio_track`: copied, or AAC at its own rate and channels), cut or
  padded to the video's duration.
* deterministic: libx264 runs with a fixed thread count (`threads`) and without mb-tree rate
  control, so the same frames give the same file whatever the machine's load or core count.
  (With mb-tree, PyAV's libx264 core 165 gave a different file in 10-50% of runs for frame
  widths such as 80, 96, 160 and 352 px, threads=1 included; system ffmpeg's core 164 did not.
  Measured cost of turning it off, `ffmpeg -crf 18 -preset medium`: +7.6% bytes and -0.3 dB
  PSNR on a 480² face clip, +29% bytes and +3.4 dB on testsrc2.)

Files are written to a hidden temporary file in the destination folder and renamed into place
only when complete, so an interrupted run never leaves a partial output at the destination,
and a destination that is one of the inputs (`inputs`) is refused before anything is written.
"""

from __future__ import annotations

import dataclasses
import fractions
import os
import uuid
from typing import Literal, Sequence

import av
import numpy as np

from diff2lip_jax.media import audio_track
from diff2lip_jax.media.decode import TIME_BASE, ColorInfo, VideoError
from diff2lip_jax.media.encode_args import (check_audio, check_destination, check_frames,
                                            chroma_unit, fit_audio, fps_fraction,
                                            is_constant_rate)

__all__ = ["VideoWriter", "write_video", "preflight", "fit_audio", "is_constant_rate",
           "VFR_TIME_BASE", "ColorInfo"]

# Container suffixes that get `movflags=+faststart`.
_MP4_SUFFIXES = frozenset({".mp4", ".mov", ".m4v"})

# Time base of variable-frame-rate output: 90 kHz, the MPEG convention (11 us resolution).
VFR_TIME_BASE = TIME_BASE


class VideoWriter:
  """Streaming H.264 writer (sound optional): frames are encoded as they come, nothing is held.

  Use as a context manager; the file is written to a hidden temporary file in the destination
  folder and renamed over `path` only when the `with` block ends without an exception (an
  exception, or `abort()`, removes it and leaves `path` untouched).

    with VideoWriter(out, fps=25, source_audio="speech.m4a", color=src.color) as w:
      for chunk in chunks:
        w.write(chunk)                 # [n, H, W, 3] uint8, frame i at i / fps
        # or w.write(chunk, times)     # [n] seconds: variable frame rate, 90 kHz time base

  Args:
    path: output file (`.mp4` recommended); missing parent folders are created with the first
      frame.
    fps: nominal frame rate (float or exact `fractions.Fraction`); constant-rate frames get pts
      i/fps in time base 1/fps.
    audio: None, or [S] float mono samples in [-1, 1] at `sample_rate`, written in full as AAC
      (trim or pad it to the video's duration first, as `write_video` does).
    sample_rate: rate of `audio` in Hz.
    crf, preset: libx264 constant rate factor (lower = better) and speed preset.
    audio_bitrate: AAC bit rate of `audio` in bit/s.
    odd_size: "pad" (default: repeat the last row/column up to the pixel format's chroma
      granularity) or "yuv444p" (odd sizes switch to 4:4:4 and keep their size).
    pix_fmt: the H.264 pixel format (default "yuv420p", what every player plays).
    color: the colour tags to write and convert with (`ColorInfo`; None: BT.709); the range
      is always limited ("tv"), full-range sources are converted.
    source_audio: an audio (or video) file whose first audio track is carried at its own rate
      and channels (`audio_track.SourceAudio`); instead of `audio`, not with it.
    audio_duration: seconds of `source_audio` to keep (cut, or padded with silence); None: the
      video's duration (last frame's time + one frame).
    copy_audio_codecs: codecs of `source_audio` that are stream-copied (else AAC).
    threads: libx264 threads (fixed, so that the output does not depend on the machine).
    faststart: put the `moov` index first (mp4/mov/m4v).
    inputs: files this output must never replace (e.g. the source video): `path` naming one
      of them is refused at once. `source_audio` is always included.

  Raises:
    VideoError: bad arguments, `path` is an input, an unreadable `source_audio` (all at
      construction), or encoding failed (nothing is left at `path`).
  """

  def __init__(self, path: str | os.PathLike, fps: float | fractions.Fraction,
               audio: np.ndarray | None = None, sample_rate: int = 16000, *, crf: int = 18,
               preset: str = "medium", audio_bitrate: int = 128_000,
               odd_size: Literal["pad", "yuv444p"] = "pad", pix_fmt: str = "yuv420p",
               color: ColorInfo | None = None,
               source_audio: str | os.PathLike | None = None,
               audio_duration: float | None = None,
               copy_audio_codecs: Sequence[str] = tuple(audio_track.COPY_CODECS),
               threads: int = 4, faststart: bool = True,
               inputs: Sequence[str | os.PathLike] = ()):
    if audio is not None:
      audio = check_audio(audio)
      if int(sample_rate) <= 0:
        raise VideoError(f"sample_rate must be positive, got {sample_rate}")
    if audio is not None and source_audio is not None:
      raise VideoError("pass either audio (an array) or source_audio (a file), not both")
    if not np.isfinite(float(fps)) or float(fps) <= 0:
      raise VideoError(f"fps must be a positive number, got {fps}")
    if odd_size not in ("yuv444p", "pad"):
      raise VideoError(f'odd_size must be "yuv444p" or "pad", got {odd_size!r}')
    if audio_duration is not None and not (np.isfinite(audio_duration) and audio_duration > 0):
      raise VideoError(f"audio_duration must be a positive number of seconds, got "
                       f"{audio_duration}")
    self.path = check_destination(path, [*inputs, source_audio])
    self._pad_unit = chroma_unit(pix_fmt)
    self.rate = fps_fraction(fps)
    self.audio = audio
    self.sample_rate = int(sample_rate)
    self.crf, self.preset, self.audio_bitrate, self.odd_size = crf, preset, audio_bitrate, odd_size
    self.pix_fmt, self.threads, self.faststart = pix_fmt, int(threads), faststart
    # Always limited range: full-range H.264 decodes as yuvj420p, which not every player shows.
    self.color = dataclasses.replace(color or ColorInfo(), range=1)
    self.audio_duration = audio_duration
    self.source_audio = None
    if source_audio is not None:
      self.source_audio = audio_track.SourceAudio(source_audio, audio_duration,
                                                  copy_codecs=frozenset(copy_audio_codecs))
    self.num_written = 0
    self._container = None
    self._vstream = None
    self._astream = None
    self._audio_pos = 0
    self._pad = (0, 0)
    self._vfr: bool | None = None
    self._last_pts = -1
    self._end = 0.0  # end of the last frame written, seconds
    self._closed = False
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
    options = {"movflags": "+faststart"} if (
        self.faststart and self.path.suffix.lower() in _MP4_SUFFIXES) else {}
    self.path.parent.mkdir(parents=True, exist_ok=True)  # only once there is something to write
    try:
      self._container = av.open(str(self._tmp), mode="w", container_options=options)
    except (av.error.FFmpegError, ValueError) as e:
      raise VideoError(f"cannot create {self.path}: {e}. Use a known video suffix such as .mp4 "
                       "and a writable folder.") from e
    pix_fmt = self.pix_fmt
    unit_h, unit_w = self._pad_unit
    if h % unit_h or w % unit_w:
      if self.odd_size == "pad":
        self._pad = (-h % unit_h, -w % unit_w)
        h, w = h + self._pad[0], w + self._pad[1]
      else:
        pix_fmt = "yuv444p"
    self._frame_fmt = pix_fmt
    vstream = self._container.add_stream("libx264", rate=self.rate)
    vstream.width, vstream.height, vstream.pix_fmt = w, h, pix_fmt
    # mbtree=0: the same frames give the same bytes (why and its cost: module docstring).
    vstream.options = {"crf": str(int(self.crf)), "preset": self.preset,
                       "x264-params": "mbtree=0"}
    cc = vstream.codec_context
    cc.thread_count = self.threads
    cc.color_primaries, cc.color_trc = self.color.primaries, self.color.trc
    cc.colorspace, cc.color_range = self.color.space, self.color.range
    self._video_tb = VFR_TIME_BASE if vfr else fractions.Fraction(1) / self.rate
    if vfr:
      vstream.time_base = VFR_TIME_BASE
      cc.time_base = VFR_TIME_BASE
    self._vstream = vstream
    self._vfr = vfr
    if self.audio is not None:
      astream = self._container.add_stream("aac", rate=self.sample_rate)
      astream.layout = "mono"
      astream.bit_rate = int(self.audio_bitrate)
      self._astream = astream
    if self.source_audio is not None:
      self.source_audio.add_to(self._container)

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

  def _video_frame(self, rgb: np.ndarray) -> av.VideoFrame:
    """An RGB frame converted to the stream's pixel format with the tagged matrix and range."""
    c = self.color
    vf = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
        format=self._frame_fmt, dst_colorspace=c.sws_space, dst_color_range=c.range, threads=1)
    vf.color_primaries, vf.color_trc, vf.colorspace, vf.color_range = (
        c.primaries, c.trc, c.space, c.range)
    return vf

  def write(self, frames: np.ndarray, times: np.ndarray | None = None) -> None:
    """Encodes frames.

    Args:
      frames: [n, H, W, 3] uint8 RGB (the same size in every call).
      times: None (frame i of the file at i / fps), or [n] float presentation times in seconds,
        increasing (variable frame rate). Use the same convention in every call.

    Raises:
      VideoError: bad shape/dtype, a size change, times that do not increase.
    """
    if self._closed:
      raise VideoError("VideoWriter is closed")
    frames = check_frames(frames) if len(frames) else np.asarray(frames)
    if len(frames) == 0:
      return
    vfr = times is not None
    if self._container is None:
      self._open(frames.shape[1], frames.shape[2], vfr)
      self._size = frames.shape[1:3]
    elif vfr != self._vfr:
      raise VideoError("mixing frames with and without timestamps in one VideoWriter")
    elif frames.shape[1:3] != self._size:
      raise VideoError(f"frame size changed from {self._size} to {frames.shape[1:3]}")
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
        end = float(times[i]) + 1 / float(self.rate)
      else:
        pts = self.num_written
        end = float((self.num_written + 1) / self.rate)
      vf = self._video_frame(frames[i])
      vf.pts = pts
      vf.time_base = self._video_tb
      self._container.mux(self._vstream.encode(vf))
      self._last_pts = pts
      self.num_written += 1
      self._end = end
      if self._astream is not None:  # interleave: audio up to this frame's time
        self._encode_audio_until(int(round(end * self.sample_rate)))
      if self.source_audio is not None:
        limit = end if self.audio_duration is None else min(end, self.audio_duration)
        self.source_audio.write_until(self._container, limit)

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
      if self.source_audio is not None:
        self.source_audio.finish(self._container, self.audio_duration
                                 if self.audio_duration is not None else self._end)
        self.source_audio.close()
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
    if self.source_audio is not None:
      self.source_audio.close()
    if self._container is not None:
      try:
        self._container.close()
      except Exception:  # pylint: disable=broad-except
        pass
      self._container = None
    if self._tmp.exists():
      self._tmp.unlink()


def preflight(path: str | os.PathLike, *, source_audio: str | os.PathLike | None = None,
              inputs: Sequence[str | os.PathLike] = (), pix_fmt: str = "yuv420p") -> None:
  """The checks of `VideoWriter(path, ...)` that need no frames, run now and writing nothing:
  call it before expensive work so that a bad destination or audio file fails at once.

  Raises:
    VideoError: `path` is a folder or one of `inputs` / `source_audio`; unknown `pix_fmt`;
      `source_audio` missing, without an audio stream, or not encodable.
  """
  check_destination(path, [*inputs, source_audio])
  chroma_unit(pix_fmt)
  if source_audio is not None:
    audio_track.SourceAudio(source_audio).close()


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
                odd_size: Literal["pad", "yuv444p"] = "pad",
                **writer_kwargs) -> None:
  """Writes frames (and optional sound) to an H.264 (+ AAC) file, atomically.

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
    odd_size: how an odd width or height is encoded (see module docstring): "pad" (default)
      repeats one edge pixel and stays yuv420p, "yuv444p" keeps the exact size.
    **writer_kwargs: any keyword of `VideoWriter` (pix_fmt, color, source_audio,
      audio_duration, copy_audio_codecs, threads, faststart, inputs).

  Raises:
    VideoError: bad arguments, or the encoder/muxer failed (nothing is left at `path`).
  """
  frames = check_frames(frames)
  if audio is not None:
    audio = check_audio(audio)
  if not np.isfinite(float(fps)) or float(fps) <= 0:
    raise VideoError(f"fps must be a positive number, got {fps}")
  rate = fps_fraction(fps)
  n = frames.shape[0]
  if audio is not None:
    if times is None:
      num_samples = int(round(n * int(sample_rate) / rate))
    else:
      num_samples = int(round((float(np.asarray(times)[-1]) + 1 / float(rate)) * int(sample_rate)))
    audio = fit_audio(audio, num_samples)
  with VideoWriter(path, rate, audio, sample_rate, crf=crf, preset=preset,
                   audio_bitrate=audio_bitrate, odd_size=odd_size, **writer_kwargs) as writer:
    writer.write(frames, times)
