"""The driving audio file's own sound, carried into an output video (`encode.VideoWriter`).

The model hears 16 kHz mono (`audio.load_audio`, for the mel only); the viewer hears the source:

* stream copy (packets unchanged) where the codec is one that mp4 players play everywhere
  (`COPY_CODECS`: AAC, MP3). The cut falls on the packet boundary nearest the output's end
  (AAC: 1024 samples, 21-23 ms at 44.1/48 kHz). A source shorter than the output by more
  than a packet is re-encoded instead, so that it can be padded.
* otherwise (FLAC, Opus, Vorbis, ALAC, PCM, AC-3, ...) AAC at the source's sample rate
  (48 kHz if AAC has no such rate) and channels (stereo if AAC has no such layout), at
  >= 192 kb/s (96 kb/s per channel), cut or padded with silence to the exact sample.

Time 0 of the output is the source's first presented sample, as for `load_audio` (so the
sound lines up with the mel the frames were generated from). The first audio stream is used,
as `load_audio` does.
"""

from __future__ import annotations

import fractions
import math
import os
import pathlib

import av
import numpy as np

from diff2lip_jax.media.decode import VideoError

__all__ = ["SourceAudio", "COPY_CODECS"]

# Codecs copied into the output as they are (browsers, QuickTime and phones play them in mp4).
COPY_CODECS = frozenset({"aac", "mp3"})

_AAC_LAYOUTS = frozenset({"mono", "stereo", "2.1", "3.0", "4.0", "5.0", "5.0(side)", "5.1",
                          "5.1(side)", "6.1", "7.1", "7.1(wide)"})


class SourceAudio:
  """The first audio stream of `path`, ready to be muxed by `add_to` / `write_until` / `finish`.

  Opening checks the file at once (so a bad audio file fails before any frame is generated).

  Args:
    path: any file with an audio stream (audio file, or a video whose sound is wanted).
    duration: the output's duration in seconds if known now (used to choose re-encoding when
      the source is too short to copy); `finish` gets the final value.
    copy_codecs: codec names copied as they are; () re-encodes every source.
    bitrate: AAC bit rate in bit/s when re-encoding (None: max(192k, 96k per channel)).

  Attributes:
    mode: "copy" or "encode".
    sample_rate, channels: of the output track (Hz, count).

  Raises:
    VideoError: missing file, no audio stream, or a stream that cannot be decoded.
  """

  def __init__(self, path: str | os.PathLike, duration: float | None = None, *,
               copy_codecs: frozenset[str] | set[str] | tuple = COPY_CODECS,
               bitrate: int | None = None):
    self.path = pathlib.Path(path)
    if not self.path.is_file():
      raise VideoError(f"audio file not found: {self.path}; check the path")
    try:
      self._src = av.open(str(self.path))
    except (av.error.FFmpegError, OSError, ValueError) as e:
      raise VideoError(f"cannot open {self.path} for its sound: {e}") from e
    if not self._src.streams.audio:
      self._src.close()
      raise VideoError(f"{self.path} has no audio stream; pass a file with an audio track")
    self._in = self._src.streams.audio[0]
    ctx = self._in.codec_context
    self.codec_name = ctx.codec.canonical_name  # mp3, not the decoder's name mp3float
    rate, channels = int(ctx.sample_rate or 0), int(ctx.channels or 0)
    if rate <= 0 or channels <= 0:
      self._src.close()
      raise VideoError(f"{self.path}: audio stream without sample rate or channels; re-encode "
                       "it, e.g. to a 48 kHz wav")
    src_seconds = (float(self._in.duration * self._in.time_base) if self._in.duration else
                   float(self._src.duration) / av.time_base if self._src.duration else None)
    too_short = (duration is not None and src_seconds is not None
                 and src_seconds < duration - 0.05)
    self.mode = "copy" if self.codec_name in copy_codecs and not too_short else "encode"
    self.sample_rate = rate if rate in av.Codec("aac", "w").audio_rates else 48000
    layout = ctx.layout.name if ctx.layout is not None else ""
    if self.mode == "copy":
      self.sample_rate, self.layout = rate, layout
    elif layout in _AAC_LAYOUTS:
      self.layout = layout
    else:
      self.layout = "stereo" if channels >= 2 else "mono"
    self.channels = av.AudioLayout(self.layout).nb_channels if self.layout else channels
    self.bitrate = int(bitrate or max(192_000, 96_000 * self.channels))
    self._out = None
    self._pos = 0  # encode: samples written; copy: unused
    self._packets = self._decoded = None
    self._pending = None  # copy: next packet not yet written; encode: [C, n] decoded samples
    self._offset = None
    if self.mode == "encode":
      self._check_encoder()

  def _check_encoder(self) -> None:
    """Opens an AAC encoder with the chosen settings once, so that a refusal comes now."""
    try:
      enc = av.CodecContext.create("aac", "w")
      enc.sample_rate, enc.layout, enc.format = self.sample_rate, self.layout, "fltp"
      enc.bit_rate = self.bitrate
      enc.open()
    except (av.error.FFmpegError, ValueError) as e:
      raise VideoError(f"{self.path}: cannot encode its sound as AAC ({self.sample_rate} Hz, "
                       f"{self.layout}): {e}") from e

  def add_to(self, container: av.container.OutputContainer) -> None:
    """Adds the output audio stream to `container` (before its first packet is muxed)."""
    if self.mode == "copy":
      self._out = container.add_stream_from_template(self._in)
      self._packets = (p for p in self._src.demux(self._in) if p.size and
                       (p.pts is not None or p.dts is not None))
    else:
      self._out = container.add_stream("aac", rate=self.sample_rate)
      self._out.layout = self.layout
      self._out.bit_rate = self.bitrate
      self._resampler = av.AudioResampler(format="fltp", layout=self.layout,
                                          rate=self.sample_rate)
      self._decoded = self._decode()
      self._pending = np.zeros((self.channels, 0), np.float32)

  # --- copy --------------------------------------------------------------------------------

  def _copy_until(self, container, seconds: float, final: bool) -> None:
    tb = self._in.time_base
    while True:
      if self._pending is None:
        self._pending = next(self._packets, None)
        if self._pending is None:
          return
      p = self._pending
      stamp = p.pts if p.pts is not None else p.dts
      if self._offset is None:  # the first presented sample is time 0 (priming before it)
        start = self._in.start_time
        self._offset = start if start is not None else stamp
      t = float((stamp - self._offset) * tb)
      d = float(p.duration * tb) if p.duration else 1024 / self.sample_rate
      if t + (d / 2 if final else d) > seconds + 1e-9:  # final: nearest packet boundary
        if final:
          self._pending = None
          self._packets = iter(())
        return
      p.pts = None if p.pts is None else p.pts - self._offset
      p.dts = None if p.dts is None else p.dts - self._offset
      p.stream = self._out
      container.mux(p)
      self._pending = None

  # --- encode ------------------------------------------------------------------------------

  def _decode(self):
    """[C, n] float32 chunks of the source at the output rate and layout."""
    try:
      for frame in self._src.decode(self._in):
        frame.pts = None  # resample by sample count, as load_audio concatenates samples
        for out in self._resampler.resample(frame):
          yield out.to_ndarray()
      for out in self._resampler.resample(None):
        yield out.to_ndarray()
    except av.error.FFmpegError as e:
      raise VideoError(f"cannot decode the sound of {self.path}: {e}") from e

  def _encode_until(self, container, seconds: float, final: bool) -> None:
    end = int(round(seconds * self.sample_rate))
    while self._pos + self._pending.shape[1] < end:
      chunk = next(self._decoded, None)
      if chunk is None:
        if not final:
          break
        silence = np.zeros((self.channels, end - self._pos - self._pending.shape[1]), np.float32)
        self._pending = np.concatenate([self._pending, silence], axis=1)
        break
      self._pending = np.concatenate([self._pending, chunk], axis=1)
    n = min(end - self._pos, self._pending.shape[1])
    for a in range(0, n, 4096):
      block = np.ascontiguousarray(self._pending[:, a:min(n, a + 4096)])
      frame = av.AudioFrame.from_ndarray(block, format="fltp", layout=self.layout)
      frame.sample_rate = self.sample_rate
      frame.pts = self._pos + a
      frame.time_base = fractions.Fraction(1, self.sample_rate)
      container.mux(self._out.encode(frame))
    self._pos += n
    self._pending = self._pending[:, n:]
    if final:
      container.mux(self._out.encode(None))

  # --- public ------------------------------------------------------------------------------

  def write_until(self, container: av.container.OutputContainer, seconds: float) -> None:
    """Muxes the sound up to `seconds` (never past it; call as the frames are written)."""
    if self.mode == "copy":
      self._copy_until(container, seconds, final=False)
    else:
      self._encode_until(container, seconds, final=False)

  def finish(self, container: av.container.OutputContainer, seconds: float) -> None:
    """Muxes the rest up to the output's duration `seconds` (cut, or padded with silence when
    re-encoding) and flushes the encoder."""
    if not math.isfinite(seconds) or seconds < 0:
      raise VideoError(f"audio duration must be a finite number of seconds, got {seconds}")
    if self.mode == "copy":
      self._copy_until(container, seconds, final=True)
    else:
      self._encode_until(container, seconds, final=True)

  def close(self) -> None:
    """Closes the source file."""
    self._packets = self._decoded = None
    self._src.close()
