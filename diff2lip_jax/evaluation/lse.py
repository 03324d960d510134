"""LSE-D / LSE-C of a video and its audio with syncnet_python's SyncNet (spec §6.1).

What syncnet_python's `SyncNetInstance.evaluate` does (in Wav2Lip's `evaluation/scores_LSE`
variant, which resizes every frame to 224x224), reproduced on arrays:

1. frames: BGR uint8 (cv2), resized to 224x224 with `cv2.resize` (`crops.resize_bilinear`, bit
   exact), as float in [0, 255]. Upstream reads them back from JPEGs that ffmpeg extracted:
   `load_upstream_inputs` / `SyncScorer.score_file` redo that round trip; `SyncScorer(frames,
   wav)` takes the frames as given;
2. audio: 16 kHz mono 16-bit PCM (ffmpeg `-ac 1 -ar 16000 -acodec pcm_s16le`), MFCC with
   `python_speech_features.mfcc(signal, 16000)` defaults on the int16-scaled samples
   (25 ms windows every 10 ms, 13 cepstra, 26 filters, nfft 512, pre-emphasis 0.97,
   lifter 22, log-energy as c0) -> [13, T], i.e. 4 MFCC steps per 25-fps video frame;
3. `min_length = min(#frames, floor(#samples / 640))`; windows i = 0 .. min_length - 6
   (upstream's `range(0, min_length - 5)`): video frames i..i+4 and MFCC steps 4i..4i+19;
4. lip and audio features of every window (`forward_lip`, `forward_aud`), then the offset
   search of `metrics.sync_distances` / `metrics.sync_scores` (vshift 15).

The video is assumed to be at 25 fps (VoxCeleb2, LRW and LRS are).
"""

from __future__ import annotations

import io
import os
from fractions import Fraction
from typing import Any, Mapping, Optional

import av
import jax
import jax.numpy as jnp
import numpy as np
import python_speech_features
from absl import logging
from PIL import Image

from diff2lip_jax import sharding
from diff2lip_jax.media.audio import AudioError
from diff2lip_jax.media.video import VideoError
from diff2lip_jax.evaluation import metrics
from diff2lip_jax.inference import crops
from diff2lip_jax.models import syncnet

RANDOM = "random"
SAMPLE_RATE = 16000
SAMPLES_PER_FRAME = 640      # 16000 / 25.
MFCC_PER_FRAME = 4           # 100 Hz MFCC / 25 fps.
WINDOW_FRAMES = 5
WINDOW_MFCC = 20
FRAME_SIZE = 224
_COEF_SCALE = 2048           # cv2 INTER_RESIZE_COEF_SCALE (11 fractional bits).
# ffmpeg's defaults for `ffmpeg -i clip.mp4 -f image2 %06d.jpg` (mjpeg encoder): the avcodec
# option table's bit rate "b" (AV_CODEC_DEFAULT_BITRATE, 200 kb/s), qmin 2 / qmax 31, with
# the mpegvideo rate control; the CLI's `-threads 1` (one slice).
JPEG_BIT_RATE = 200_000
JPEG_QMIN, JPEG_QMAX = 2, 31


def mfcc(wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
  """[S] float waveform in [-1, 1] -> [13, T] float32 MFCC as syncnet_python computes it
  (on 16-bit integer sample values, as `scipy.io.wavfile.read` returns them)."""
  pcm = np.clip(np.round(np.asarray(wav, np.float64) * 32768.0), -32768, 32767).astype(np.int16)
  return np.asarray(python_speech_features.mfcc(pcm, sample_rate), np.float32).T


def prepare_frames(frames: np.ndarray, size: int = FRAME_SIZE) -> np.ndarray:
  """[N, H, W, 3] uint8 RGB -> [N, size, size, 3] uint8 BGR (`cv2.resize`, bit exact). Other
  dtypes are taken as values in [0, 255], rounded and clipped to uint8 first."""
  frames = np.asarray(frames)
  if frames.dtype != np.uint8:
    frames = np.clip(np.round(frames), 0, 255).astype(np.uint8)
  out = np.empty((len(frames), size, size, 3), np.uint8)
  for i, f in enumerate(frames):
    out[i] = crops.resize_bilinear(f, (size, size))[..., ::-1]
  return out


def num_windows(num_frames: int, num_samples: int) -> int:
  """Number of 5-frame windows syncnet_python scores: min(#frames, #samples // 640) - 5."""
  return max(0, min(num_frames, num_samples // SAMPLES_PER_FRAME) - WINDOW_FRAMES)


def _planes(frame: av.VideoFrame) -> list[np.ndarray]:
  """The [h, w] uint8 planes of a planar 8-bit frame, without line padding."""
  return [np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, :p.width]
          for p in frame.planes]


def _to_yuvj420p(frame: av.VideoFrame) -> av.VideoFrame:
  """The full-range yuvj420p frame the ffmpeg CLI hands the mjpeg encoder.

  The CLI (ffmpeg 5.1, the version that made the reference data) converts limited-range
  yuv420p with libswscale's unscaled-size path: samples to 15 bits (p << 7), then
  `lumRangeToJpeg_c` (min(v, 30189) * 19077 - 39057361) >> 14 and `chrRangeToJpeg_c`
  (min(v, 30775) * 4663 - 9289992) >> 12, then `yuv2plane1_8_c` (v + 64) >> 7 (libswscale/
  swscale.c, output.c); done here in integers: measured bit exact against `ffmpeg -pix_fmt
  yuvj420p` on both reference clips. (PyAV's own libswscale, ffmpeg 8, rounds 16 % of the
  samples one step differently.) Full-range yuv420p/yuvj420p passes unchanged, as in the CLI;
  any other format goes through PyAV's libswscale (bicubic, as the CLI's sws_flags; not
  measured against the CLI).
  """
  name, full = frame.format.name, frame.color_range == 2    # AVCOL_RANGE_JPEG
  if name not in ("yuv420p", "yuvj420p"):
    return frame.reformat(format="yuvj420p", interpolation="BICUBIC", dst_color_range="JPEG",
                          threads=1)
  planes = [p.astype(np.int64) << 7 for p in _planes(frame)]
  if name == "yuv420p" and not full:
    planes = [(np.minimum(planes[0], 30189) * 19077 - 39057361) >> 14] + [
        (np.minimum(c, 30775) * 4663 - 9289992) >> 12 for c in planes[1:]]
  out = av.VideoFrame(frame.width, frame.height, "yuvj420p")
  for dst, v in zip(out.planes, planes):
    np.frombuffer(dst, np.uint8).reshape(dst.height, dst.line_size)[:, :dst.width] = (
        np.clip((v + 64) >> 7, 0, 255))
  return out


def _jpeg_encoder(width: int, height: int, rate: Fraction) -> av.CodecContext:
  """PyAV's mjpeg encoder set as `ffmpeg -threads 1 -f image2 %06d.jpg` sets it (fftools
  ffmpeg.c `init_output_stream_encode`): yuvj420p, time base 1/frame rate and frame rate (the
  rate control's bits per frame = bit rate / frame rate), 200 kb/s, qmin 2, qmax 31, one
  thread. Its JPEGs decode bit-identically to the CLI's on both reference clips (the rate
  control takes the quantiser 4 -> 25 over the 224x224 one)."""
  enc = av.CodecContext.create("mjpeg", "w")
  enc.width, enc.height, enc.pix_fmt = width, height, "yuvj420p"
  enc.time_base, enc.framerate = 1 / rate, rate
  enc.bit_rate, enc.qmin, enc.qmax = JPEG_BIT_RATE, JPEG_QMIN, JPEG_QMAX
  enc.color_range = 2
  enc.thread_count = 1
  return enc


def _decode_jpeg(packet: bytes) -> np.ndarray:
  """JPEG bytes -> [H, W, 3] uint8 RGB with libjpeg(-turbo) defaults (islow IDCT, fancy
  upsampling), i.e. `cv2.imread` reversed to RGB: Pillow, bit exact against opencv-python 5.0
  on every extracted frame of both reference clips. (PyAV's mjpeg decoder + libswscale differs
  by up to 33 levels: other IDCT and chroma upsampling.)"""
  with Image.open(io.BytesIO(packet)) as im:
    return np.asarray(im.convert("RGB"))


def _upstream_frames(container: av.container.InputContainer, path: str) -> np.ndarray:
  """[N, H, W, 3] uint8 RGB: every frame of the first video stream through the JPEG round trip."""
  if not container.streams.video:
    raise VideoError(f"{path} has no video stream; LSE needs a video with its audio track")
  stream = container.streams.video[0]
  # The CLI's encoder rate: the filter graph's, av_guess_frame_rate of the input stream.
  rate = stream.guessed_rate or stream.average_rate or Fraction(25)
  enc, frames = None, []
  try:
    for i, frame in enumerate(container.decode(stream)):
      if enc is None:
        enc = _jpeg_encoder(frame.width, frame.height, Fraction(rate))
      jpeg = _to_yuvj420p(frame)
      jpeg.pts, jpeg.time_base = i, enc.time_base
      frames += [_decode_jpeg(bytes(p)) for p in enc.encode(jpeg)]
  except av.FFmpegError as e:
    raise VideoError(f"cannot decode the video of {path}: {e}; re-encode it to H.264 MP4") from e
  if enc is None:
    raise VideoError(f"{path} contains no decodable video frames; check or re-encode it")
  frames += [_decode_jpeg(bytes(p)) for p in enc.encode(None)]
  return np.stack(frames)


def _upstream_audio(container: av.container.InputContainer, path: str) -> np.ndarray:
  """[S] float32: the first audio stream as 16 kHz mono int16 (libswresample) / 32768."""
  if not container.streams.audio:
    raise AudioError(f"{path} has no audio stream; LSE scores a video against its own audio")
  resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
  chunks = []
  try:
    for frame in container.decode(container.streams.audio[0]):
      chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
  except av.FFmpegError as e:
    raise AudioError(f"cannot decode the audio of {path}: {e}; re-encode it (e.g. AAC)") from e
  if not chunks:
    raise AudioError(f"{path}: the audio stream is empty; LSE needs the clip's audio")
  return (np.concatenate(chunks).astype(np.float32) / 32768.0).astype(np.float32)


def load_upstream_inputs(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
  """The frames and audio of a video file as upstream's LSE scripts see them.

  Wav2Lip `evaluation/scores_LSE` (syncnet_python `run_pipeline` / `SyncNetInstance`)
  extracts them with the ffmpeg CLI; this redoes both in-process with PyAV (same libavcodec
  encoder and libswresample) and Pillow (libjpeg, as cv2.imread):

  * frames: `ffmpeg -y -i clip -threads 1 -f image2 %06d.jpg`, read back with `cv2.imread`:
    every decoded frame is converted to yuvj420p (`_to_yuvj420p`), JPEG-encoded with the CLI's
    default mjpeg rate control (`_jpeg_encoder`; lossy: ~29 dB PSNR) and decoded (`_decode_jpeg`).
    One JPEG per decoded frame (the CLI's constant-frame-rate sync would duplicate or drop
    frames of variable-rate videos); display rotation is ignored (the CLI would apply it).
  * audio: `ffmpeg -y -i clip -async 1 -ac 1 -vn -acodec pcm_s16le -ar 16000`: the first
    audio stream through libswresample (`av.AudioResampler`, s16 mono 16 kHz: its stereo
    downmix and resampler are the CLI's). `-async 1` would also pad or trim gaps inside the
    stream's timestamps; that is not done.

  On the two reference clips (../shared/upstream/lse_e2e) the frames are bit exact and the
  audio differs in 8 and 2 of 51200 samples by one step (the AAC decoder of PyAV's ffmpeg 8
  rounds a few floats near .5 differently from the CLI's ffmpeg 5.1).

  Args:
    path: any file PyAV demuxes with a video and an audio stream (mp4, mkv, avi, ...).

  Returns:
    (frames [N, H, W, 3] uint8 RGB at the file's size, wav [S] float32 in [-1, 1): the
    16 kHz mono int16 samples / 32768).

  Raises:
    VideoError: missing or unreadable file, no video stream or no decodable frame.
    AudioError: no audio stream, undecodable or empty audio.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise VideoError(f"video file not found: {path}")
  out = []
  for read in (_upstream_frames, _upstream_audio):      # one pass per stream, as two CLI runs
    try:
      container = av.open(path)
    except (av.FFmpegError, OSError, ValueError) as e:
      raise VideoError(f"cannot open {path} as a video: {e}") from e
    with container:
      out.append(read(container, path))
  return out[0], out[1]


def load_syncnet(weights: str | os.PathLike | Mapping[str, Any]) -> tuple[syncnet.SyncNetV2, dict]:
  """(model, variables) from `syncnet_v2.model` (or an .npz of it), from a syncnet_python `S`
  state_dict ({name: array}), or random weights for `"random"` (a pipeline check only: LSE
  values are then meaningless, and a warning says so)."""
  if isinstance(weights, Mapping):
    model = syncnet.SyncNetV2()
    return model, syncnet.syncnet_v2_variables(weights, model)
  if str(weights) == RANDOM:
    logging.warning("RANDOM WEIGHTS for SyncNet (LSE-C/LSE-D): values are meaningless. Pass "
                    "syncnet_python's syncnet_v2.model for real scores.")
    model = syncnet.SyncNetV2()
    abstract = jax.eval_shape(lambda: syncnet.init_syncnet_v2(model, jax.random.key(0)))
    return model, syncnet.random_variables(abstract)
  return syncnet.load_syncnet_v2(weights)


class SyncScorer:
  """Callable: (frames [N, H, W, 3] uint8 RGB at 25 fps, wav [S] float32 16 kHz) ->
  {"lse_d", "lse_c", "av_offset", "lse_windows"}, or None when the clip has fewer than 6
  frames' worth of video and audio. `score_file(path)` scores a video file as upstream's
  scripts do (JPEG round trip, the file's own audio track).

  `weights`: see `load_syncnet`."""

  def __init__(self, weights: str | os.PathLike | Mapping[str, Any] = RANDOM,
               batch_size: int = 20, vshift: int = metrics.LSE_VSHIFT,
               mesh: Optional[jax.sharding.Mesh] = None):
    self.model, variables = load_syncnet(weights)
    self.mesh = mesh or sharding.local_mesh()
    self.variables = sharding.replicate(variables, self.mesh)
    self.batch_size = sharding.round_up(batch_size, self.mesh.size)
    self.vshift = vshift
    model = self.model
    self._lips = jax.jit(lambda v, x: model.apply(v, x.astype(jnp.float32),
                                                  method=syncnet.SyncNetV2.embed_lips))
    self._audio = jax.jit(lambda v, x: model.apply(v, x, method=syncnet.SyncNetV2.embed_audio))

  def features(self, frames_bgr: np.ndarray, cepstra: np.ndarray,
               count: int) -> tuple[np.ndarray, np.ndarray]:
    """Lip and audio features [count, 1024] of windows 0..count-1.

    Args:
      frames_bgr: [N, 224, 224, 3] uint8 BGR (`prepare_frames`).
      cepstra: [13, T] MFCC (`mfcc`).
      count: number of windows (`num_windows`).
    """
    lips, auds = [], []
    b = self.batch_size
    for start in range(0, count, b):
      idx = np.arange(start, min(start + b, count))
      vid = np.stack([frames_bgr[i:i + WINDOW_FRAMES] for i in idx])           # [n, 5, 224, 224, 3]
      aud = np.stack([cepstra[:, MFCC_PER_FRAME * i:MFCC_PER_FRAME * i + WINDOW_MFCC]
                      for i in idx])[..., None]                                 # [n, 13, 20, 1]
      lips.append(np.asarray(self._lips(self.variables, sharding.shard_batch(
          sharding.pad_batch(vid, b), self.mesh)))[:len(idx)])
      auds.append(np.asarray(self._audio(self.variables, sharding.shard_batch(
          sharding.pad_batch(aud.astype(np.float32), b), self.mesh)))[:len(idx)])
    return np.concatenate(lips), np.concatenate(auds)

  def distances(self, frames: np.ndarray, wav: np.ndarray) -> Optional[np.ndarray]:
    """[L, 2 * vshift + 1] float64 `metrics.sync_distances` of the L = `num_windows` windows
    (syncnet_python's `dists`, window x offset), or None when L < 1. Inputs as `__call__`."""
    count = num_windows(len(frames), len(wav))
    if count < 1:
      return None
    used = count + WINDOW_FRAMES - 1
    v, a = self.features(prepare_frames(frames[:used]), mfcc(wav), count)
    return metrics.sync_distances(v, a, self.vshift)

  def __call__(self, frames: np.ndarray, wav: np.ndarray) -> Optional[dict]:
    dists = self.distances(frames, wav)
    if dists is None:
      return None
    return {**metrics.sync_scores(dists, self.vshift), "lse_windows": len(dists)}

  def score_file(self, path: str | os.PathLike) -> Optional[dict]:
    """Scores a video file with its own audio exactly as Wav2Lip's `scores_LSE` does:
    `self(*load_upstream_inputs(path))`. Raises `VideoError` / `AudioError` (see there)."""
    return self(*load_upstream_inputs(path))
