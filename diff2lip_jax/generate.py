r"""Lip-sync a face video (or a still image) to any speech audio with Diff2Lip.

  python -m diff2lip_jax.generate --video_path faces.mp4 --audio_path speech.wav \
      --out_path out.mp4 --checkpoint checkpoints/diff2lip_released --timestep_respacing ddim25
  python -m diff2lip_jax.generate --filelist pairs.txt --data_root videos/ \
      --sample_path outputs/ --checkpoint checkpoints/diff2lip_released

Pipeline (upstream `generate.py`, generic branch, spec §4-5), as a stream in two passes so that
memory does not grow with the video's length:

1. analysis (`analyze`): decode the video once; find every face in every frame (dlib HOG by
   default, upstream's S3FD with `--s3fd_path`), detect scene cuts, pick one face (`--face`:
   largest, index or point) and track it by box overlap; pad and smooth its boxes over 5 frames
   within each scene; lay out the output frames on the audio's clock (any frame rate, including
   variable; a video shorter than the audio is played back and forth, or trimmed).
2. generation (`_generate`): chunk by chunk (`sampling_batch_size * nframes` frames), decode the
   source frames again, crop the face to 128x128, pair each frame with its 0.2 s mel window cut at
   the frame's own timestamp, sample the lower half with the jitted DDIM sampler (one initial
   noise shared by all frames, so chunks join without a seam), blend the result back (feathered
   mask + colour matching, or upstream's hard paste) and encode.

Frames where the tracked face is not found pass through unchanged, with a cross-fade over a few
frames at the edges of such runs, and are reported. `lipsync(...)` returns the frames in memory
(for short clips and evaluation), `lipsync_to_file(...)` streams to disk (the CLI).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import sys
import threading
from typing import Any, Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import librosa
import numpy as np
from absl import app, flags, logging
from tqdm.auto import tqdm

from diff2lip_jax.media import audio as audio_lib
from diff2lip_jax.inference import blend
from diff2lip_jax.inference import checkpoints
from diff2lip_jax.inference import crops, faces
from diff2lip_jax import sharding
from diff2lip_jax.inference import tracking
from diff2lip_jax.media import video as video_lib
from diff2lip_jax.media import encode
from diff2lip_jax.diffusion import make_diffusion
from diff2lip_jax.inference.sampler import make_sampler

RANDOM_CHECKPOINT = "random"
AUDIO_LONGER = ("pingpong", "trim")


class LipsyncError(ValueError):
  """The inputs cannot be lip-synced (e.g. no face anywhere); the message says what to do."""


@dataclasses.dataclass
class LipsyncResult:
  """Output of `lipsync`.

  frames: [N, H, W, 3] uint8 RGB at the input's resolution.
  fps: frames per second (the input's nominal rate; 25 for a still image).
  audio: [S] float32 16 kHz mono driving audio, cut to the video's duration
    (S = round(N / fps * 16000) at a constant frame rate).
  no_face: inclusive ranges of output frames passed through unchanged for lack of a face.
  times: [N] float64 output timestamps in seconds (k / fps at a constant frame rate; the
    input's own timestamps for variable-frame-rate input).
  scene_cuts: source frame indices where a new scene starts (face tracking restarted).
  """

  frames: np.ndarray
  fps: float
  audio: np.ndarray
  no_face: list[tuple[int, int]]
  times: Optional[np.ndarray] = None
  scene_cuts: list[int] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class LipsyncSummary:
  """Output of `lipsync_to_file`: what was written (the frames are in the file)."""

  out_path: pathlib.Path
  num_frames: int
  fps: float
  no_face: list[tuple[int, int]]
  times: np.ndarray
  scene_cuts: list[int]


def pingpong_indices(num_out: int, num_src: int) -> np.ndarray:
  """Source frame for each output frame: 0..n-1, then back n-2..1, and again. [num_out] int."""
  if num_src == 1:
    return np.zeros(num_out, np.int64)
  period = 2 * (num_src - 1)
  k = np.arange(num_out) % period
  return np.where(k < num_src, k, period - k)


def load_model(checkpoint: str | os.PathLike, dtype: Any = jnp.float32):
  """(model, params) from a checkpoint directory, or the released architecture with random
  weights for `checkpoint == "random"` (a pipeline check: the mouth region comes out as noise).

  Raises:
    CheckpointError: missing or mismatched checkpoint.
  """
  loaded = checkpoints.load_model(checkpoint, dtype)
  return loaded.model, loaded.params


def _to_unit(x: np.ndarray) -> np.ndarray:
  return x.astype(np.float32) / 127.5 - 1.0


def _to_uint8(x: np.ndarray) -> np.ndarray:
  return np.clip(np.round((np.asarray(x) + 1.0) * 127.5), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Audio.


def prepare_audio(audio: str | os.PathLike | np.ndarray,
                  sample_rate: int = audio_lib.SAMPLE_RATE) -> np.ndarray:
  """Driving audio as [S] float32 16 kHz mono.

  Args:
    audio: a path (any audio or video file, any rate, any channels: `audio.load_audio`), or
      samples: [S] mono, or [S, C] / [C, S] multi-channel (the shorter axis is taken as channels
      and averaged), at `sample_rate`.
    sample_rate: rate of array input in Hz; resampled to 16 kHz (soxr, as `load_audio`).
  """
  if not isinstance(audio, np.ndarray):
    return audio_lib.load_audio(audio)
  wav = np.asarray(audio)
  if wav.ndim == 2:
    wav = wav.mean(axis=int(np.argmin(wav.shape)))
  if wav.ndim != 1:
    raise audio_lib.AudioError(f"audio array must be [S] or [S, channels], got {audio.shape}")
  if np.issubdtype(wav.dtype, np.integer):
    wav = wav / float(np.iinfo(wav.dtype).max + 1)
  wav = wav.astype(np.float32)
  if int(sample_rate) != audio_lib.SAMPLE_RATE:
    wav = librosa.resample(wav, orig_sr=int(sample_rate), target_sr=audio_lib.SAMPLE_RATE,
                           res_type=audio_lib.RESAMPLE_TYPE).astype(np.float32)
  return wav


# ---------------------------------------------------------------------------------------------
# Planning: which source frame and timestamp each output frame gets, faces, cross-fades.


def output_timeline(times: np.ndarray, fps: float, duration: float,
                    audio_longer: str = "pingpong"
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Source frame, timestamp and display duration of every output frame.

  The audio is the clock: the output has the frames whose display interval ends within
  `duration`. Input frame k is shown for times[k+1] - times[k] (the last one for 1/fps), so
  constant-rate input gives floor(duration * fps) frames at k / fps, and variable-rate input keeps
  its own timestamps. If the video is shorter than the audio, "pingpong" plays it back and forth
  (0, 1, ..., n-1, n-2, ..., 0, 1, ...; frames played backwards keep their spacing), "trim" stops
  at the video's end (the caller then cuts the audio). A still image (n = 1) is always repeated.

  Args:
    times: [n] increasing frame times in seconds (relative to the first frame).
    fps: nominal frame rate (display duration of the last frame, and of each frame of a still).
    duration: audio length in seconds.
    audio_longer: "pingpong" or "trim".

  Returns:
    src [N] int64 source frame indices, out_times [N] float64 output timestamps (seconds from
    0) and durations [N] float64 (seconds); N is 0 if the audio is shorter than one frame.
  """
  if audio_longer not in AUDIO_LONGER:
    raise ValueError(f"audio_longer must be one of {AUDIO_LONGER}, got {audio_longer!r}")
  times = np.asarray(times, np.float64)
  times = times - times[0]
  n = len(times)
  step = 1.0 / float(fps)
  eps = 1e-4
  if n == 1:
    count = int(np.floor(duration / step + eps))
    return (np.zeros(count, np.int64), np.arange(count, dtype=np.float64) * step,
            np.full(count, step))
  gap = np.append(np.diff(times), step)
  gap = np.where(gap > 0, gap, step)  # frame k is shown until frame k + 1
  if audio_longer == "trim" or duration <= times[-1] + step + eps:
    src, out_times, durations = np.arange(n, dtype=np.int64), times, gap
  else:
    period = 2 * (n - 1)
    cycles = int(np.ceil(duration / max(2 * times[-1], step))) + 1
    seq = pingpong_indices(n + cycles * period + 1, n)
    src = seq[:-1]
    # Forward k -> k+1 lasts gap[k]; backward k -> k-1 lasts times[k] - times[k-1] = gap[k-1].
    durations = np.where(seq[1:] > src, gap[src], gap[np.minimum(src, seq[1:])])
    out_times = np.concatenate([[0.0], np.cumsum(durations[:-1])])
    out_times[:n] = times  # the first pass keeps the input's timestamps exactly
  count = int(np.sum(out_times + durations <= duration + eps))
  return src[:count], out_times[:count], durations[:count]


def crossfade_weights(found: np.ndarray, frames: int = 3) -> np.ndarray:
  """Blend weight of every output frame: 0 without a face, ramping up over `frames` frames.

  A frame at distance d (in frames) from the nearest frame without a face gets
  min(1, d / (frames + 1)); frames without a face get 0 (they pass through unchanged).

  Args:
    found: [N] bool, face present.
    frames: length of the ramp (0: hard cut between generated and original frames).

  Returns:
    [N] float64 in [0, 1].
  """
  found = np.asarray(found, bool)
  n = len(found)
  if found.all() or frames <= 0:
    return found.astype(np.float64)
  idx = np.arange(n)
  missing = np.flatnonzero(~found)
  pos = np.searchsorted(missing, idx)
  left = np.where(pos > 0, idx - missing[np.maximum(pos - 1, 0)], n + frames + 1)
  right = np.where(pos < len(missing), missing[np.minimum(pos, len(missing) - 1)] - idx,
                   n + frames + 1)
  dist = np.minimum(left, right)
  return np.clip(dist / (frames + 1.0), 0.0, 1.0)


@dataclasses.dataclass
class Plan:
  """What the analysis pass found and what the generation pass will produce.

  Attributes:
    size_hw: (H, W) of the frames.
    fps: nominal frame rate.
    source_times: [n] float64 times of the scanned source frames.
    boxes: [n, 4] int64 final face box per source frame (padded, smoothed).
    found: [n] bool, the tracked face was detected in that source frame.
    scene_cuts: source frames that start a new scene.
    src: [N] int64 source frame of each output frame.
    out_times: [N] float64 output timestamps in seconds.
    out_durations: [N] float64 display duration of each output frame in seconds.
    alpha: [N] float64 blend weight of each output frame (0: passed through).
    vfr: whether the source has a variable frame rate (its timestamps are then written).
  """

  size_hw: tuple[int, int]
  fps: float
  source_times: np.ndarray
  boxes: np.ndarray
  found: np.ndarray
  scene_cuts: list[int]
  src: np.ndarray
  out_times: np.ndarray
  out_durations: np.ndarray
  alpha: np.ndarray
  vfr: bool

  @property
  def num_out(self) -> int:
    return len(self.src)

  @property
  def out_found(self) -> np.ndarray:
    return self.found[self.src]

  @property
  def no_face(self) -> list[tuple[int, int]]:
    return faces.missing_ranges(self.out_found)

  @property
  def duration(self) -> float:
    """Output duration in seconds: last timestamp plus its display duration."""
    return float(self.out_times[-1] + self.out_durations[-1]) if self.num_out else 0.0


def analyze(source: video_lib.FrameSource, duration: float, *,
            detector: faces.FaceDetector,
            selector: tracking.FaceSelector,
            pads: Sequence[int] = (0, 0, 0, 0),
            batch_size: int = 64,
            smooth_window: int = 5,
            scene_cut_threshold: float = 0.5,
            iou_threshold: float = 0.3,
            audio_longer: str = "pingpong",
            crossfade_frames: int = 3,
            progress: bool = True) -> Plan:
  """First pass: decodes the video once, detects every face, finds scene cuts, tracks the
  selected face, smooths its boxes and lays out the output frames (nothing is kept but boxes).

  Frames beyond the audio's end (plus `smooth_window` frames of look-ahead for the smoothing)
  are not decoded.

  Raises:
    LipsyncError: no face in any frame.
  """
  dets: list[tuple[np.ndarray, np.ndarray]] = []
  cuts: list[int] = []
  cutter = tracking.SceneCutDetector(scene_cut_threshold)
  with tqdm(desc="face detection", unit="frame", disable=not progress) as bar:
    for start, frames, _ in source.scan(batch_size, stop_time=duration,
                                        extra_frames=smooth_window):
      for j, frame in enumerate(frames):
        if cutter.update(frame):
          cuts.append(start + j)
      dets.extend(faces.detect_all_frames(detector, frames))
      bar.update(len(frames))
  n = source.num_frames
  times = np.asarray(source.times, np.float64)[:n]
  fps = float(source.fps)
  raw, found = tracking.track_faces(dets, selector, cuts, iou_threshold=iou_threshold,
                                    max_gap=max(1, int(round(fps))))
  if not found.any():
    raise LipsyncError(f"no face found in any of the {n} frames; use a video with a visible, "
                       "roughly frontal face (dlib's HOG detector needs faces of ~80 px or more; "
                       "S3FD, --s3fd_path, finds smaller and turned faces)")
  boxes = faces.finalize_boxes(raw, found, source.size_hw, pads, smooth_window,
                                  tracking.segments_from_cuts(n, cuts))
  src, out_times, durations = output_timeline(times, fps, duration, audio_longer)
  alpha = crossfade_weights(found[src], crossfade_frames)
  return Plan(size_hw=source.size_hw, fps=fps, source_times=times, boxes=boxes, found=found,
              scene_cuts=cuts, src=src, out_times=out_times, out_durations=durations,
              alpha=alpha,
              vfr=not encode.is_constant_rate(times, fps))


# ---------------------------------------------------------------------------------------------
# Generation pass.

_SAMPLERS: dict[tuple, Any] = {}


def get_sampler(model, timestep_respacing: str, use_ddim: bool, eta: float,
                clip_denoised: bool, face_hide_percentage: float, mesh=None):
  """A jitted frame sampler (`sampling.make_sampler`), cached so that repeated calls
  (filelists, tests) compile once; with `mesh` its frame batch is split over the mesh."""
  key = (model, timestep_respacing, use_ddim, float(eta), clip_denoised,
         float(face_hide_percentage), mesh)
  if key not in _SAMPLERS:
    _SAMPLERS[key] = make_sampler(model, make_diffusion(timestep_respacing=timestep_respacing),
                                  use_ddim=use_ddim, eta=eta, clip_denoised=clip_denoised,
                                  face_hide_percentage=face_hide_percentage, mesh=mesh)
  return _SAMPLERS[key]


def _bucket(count: int, cap: int) -> int:
  """Model batch for `count` frames: rounded up to a multiple of 8, at most `cap` (few distinct
  shapes, so few compilations, and at most 7 padded frames)."""
  return max(1, min(int(cap), -(-int(count) // 8) * 8))


@dataclasses.dataclass
class _Settings:
  """Options of one lip-sync run (see `lipsync`)."""

  timestep_respacing: str = "ddim25"
  use_ddim: bool = True
  eta: float = 0.0
  clip_denoised: bool = True
  sampling_batch_size: int = 32
  nframes: int = 5
  face_hide_percentage: float = 0.5
  sampling_seed: int = 7
  blend: str = "feather"
  feather: float = 0.1
  color_match: bool = True
  progress: bool = True


def _generate(source: video_lib.FrameSource, plan: Plan, mel: np.ndarray, model: Any,
              params: Any, opts: _Settings, device: Any = None
              ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Second pass: yields (frames [c, H, W, 3] uint8, times [c]) chunk by chunk, in order.

  A chunk is `sampling_batch_size * nframes` output frames (upstream's 160): its source frames
  are decoded (`source.read`), the tracked face is cropped, the lower half sampled with the noise
  shared by the whole video, and the result blended back. The device works on chunk i while
  the host decodes and crops chunk i+1. Every frame depends only on its own crop, box, mel window
  and the shared noise, so the output does not depend on the chunking.
  """
  size = model.image_size
  # One video, no device given: its frame batches are split over all local devices.
  mesh = sharding.local_mesh() if device is None and jax.local_device_count() > 1 else None
  sample = get_sampler(model, opts.timestep_respacing, opts.use_ddim, opts.eta,
                       opts.clip_denoised, opts.face_hide_percentage, mesh)
  key_noise, key_steps = jax.random.split(jax.random.key(opts.sampling_seed))
  noise = jax.random.normal(key_noise, (1, size, size, 3), jnp.float32)
  if device is not None or mesh is not None:
    params, noise = jax.device_put(
        (params, noise), device if mesh is None else sharding.replicated(mesh))
  stochastic = (not opts.use_ddim) or opts.eta > 0
  chunk = max(1, opts.sampling_batch_size * opts.nframes)
  out_found = plan.out_found
  batch = _bucket(int(out_found.sum()), chunk)

  def start(c0: int):
    ks = np.arange(c0, min(c0 + chunk, plan.num_out))
    s = plan.src[ks]
    lo, hi = int(s.min()), int(s.max()) + 1
    block = source.read(lo, hi)
    frames = block[s - lo]  # a copy in output order
    del block
    wpos = np.flatnonzero(out_found[ks])
    pending = []
    if len(wpos):
      faces = crops.crop_faces(frames[wpos], plan.boxes[s[wpos]], size)
      mels = audio_lib.mel_windows(mel, plan.out_times[ks[wpos]])
      assert len(mels) == len(wpos), (len(mels), len(wpos))
      for b0 in range(0, len(wpos), batch):
        m = min(batch, len(wpos) - b0)
        take = np.arange(b0, b0 + batch).clip(max=b0 + m - 1)  # pad with the last frame
        face = _to_unit(faces[take])
        rng = jax.random.fold_in(key_steps, int(ks[wpos[b0]])) if stochastic else None
        pending.append((m, sample(params, face, face, mels[take], noise, rng)))
    return ks, s, frames, wpos, pending

  def finish(job):
    ks, s, frames, wpos, pending = job
    if len(wpos):
      generated = np.concatenate([_to_uint8(jax.device_get(out))[:m] for m, out in pending])
      frames[wpos] = blend.blend_faces(
          frames[wpos], generated, plan.boxes[s[wpos]], mode=opts.blend,
          face_hide_percentage=opts.face_hide_percentage, feather=opts.feather,
          color_match=opts.color_match, alpha=plan.alpha[ks[wpos]])
    return frames, plan.out_times[ks]

  job = None
  with tqdm(total=plan.num_out, desc="lip-sync", unit="frame", disable=not opts.progress) as bar:
    for c0 in range(0, plan.num_out, chunk):
      nxt = start(c0)
      if job is not None:
        out = finish(job)
        bar.update(len(out[0]))
        yield out
      job = nxt
    if job is not None:
      out = finish(job)
      bar.update(len(out[0]))
      yield out


@dataclasses.dataclass
class _Run:
  """A prepared run: the plan, the audio to mux and the chunk generator."""

  plan: Plan
  audio: np.ndarray
  chunks: Iterator[tuple[np.ndarray, np.ndarray]]
  source: video_lib.FrameSource


def _prepare(video, audio, *, checkpoint, model_and_params, dtype, detector, s3fd_path,
             face, pads, face_det_batch_size, audio_longer, crossfade_frames,
             scene_cut_threshold, audio_sample_rate, opts: _Settings, device=None) -> _Run:
  """Loads inputs, runs the analysis pass and sets up the generation pass."""
  if opts.blend not in blend.BLEND_MODES:
    raise ValueError(f"blend must be one of {blend.BLEND_MODES}, got {opts.blend!r}")
  selector = tracking.parse_face(face)
  wav = prepare_audio(audio, audio_sample_rate)
  seconds = audio_lib.check_duration(wav)
  source = video_lib.open_source(video)
  # The checkpoint is loaded before the (long) analysis pass so that a bad one fails at once.
  model, params = model_and_params or load_model(checkpoint, dtype)
  if detector is None:
    detector = (faces.make_detector("s3fd", path=s3fd_path, device=device) if s3fd_path
                else faces.make_detector("dlib"))
  plan = analyze(source, seconds, detector=detector, selector=selector, pads=pads,
                 batch_size=face_det_batch_size, scene_cut_threshold=scene_cut_threshold,
                 audio_longer=audio_longer, crossfade_frames=crossfade_frames,
                 progress=opts.progress)
  if plan.num_out < 1:
    raise audio_lib.AudioError(f"audio is {seconds:.2f} s, shorter than one frame at "
                               f"{plan.fps:g} fps; pass a longer recording")
  if plan.no_face:
    logging.warning("%s: those output frames pass through unchanged",
                    faces.describe_missing(plan.out_found))
  if plan.scene_cuts:
    logging.info("scene cuts at source frames %s: face tracking restarted there",
                 plan.scene_cuts)
  mel = audio_lib.melspectrogram_for_frames(wav)
  out_audio = encode.fit_audio(wav, int(round(plan.duration * audio_lib.SAMPLE_RATE)))
  chunks = _generate(source, plan, mel, model, params, opts, device)
  return _Run(plan=plan, audio=out_audio, chunks=chunks, source=source)


def lipsync(video: str | os.PathLike | video_lib.Video,
            audio: str | os.PathLike | np.ndarray,
            *,
            checkpoint: str | os.PathLike = RANDOM_CHECKPOINT,
            model_and_params: Optional[tuple[Any, Any]] = None,
            timestep_respacing: str = "ddim25",
            use_ddim: bool = True,
            eta: float = 0.0,
            clip_denoised: bool = True,
            sampling_batch_size: int = 32,
            nframes: int = 5,
            face_det_batch_size: int = 64,
            pads: Sequence[int] = (0, 0, 0, 0),
            face_hide_percentage: float = 0.5,
            sampling_seed: int = 7,
            dtype: Any = jnp.float32,
            detector: Optional[faces.FaceDetector] = None,
            progress: bool = True,
            blend: str = "feather",
            feather: float = 0.1,
            color_match: bool = True,
            face: str | int | tracking.FaceSelector = "largest",
            audio_longer: str = "pingpong",
            crossfade_frames: int = 3,
            scene_cut_threshold: float = 0.5,
            s3fd_path: str | os.PathLike | None = None,
            audio_sample_rate: int = audio_lib.SAMPLE_RATE,
            device: Any = None) -> LipsyncResult:
  """Regenerates the lower face of every frame to match `audio`; returns all frames in memory.

  For long videos use `lipsync_to_file`, which streams to disk in bounded memory.

  Args:
    video: path of a video or still image, or a decoded `Video`.
    audio: path of any audio (or video with an audio track; any rate, mono or stereo), or samples
      ([S] mono or [S, C]) at `audio_sample_rate`.
    checkpoint: checkpoint directory (`python -m diff2lip_jax.convert`), or "random".
    model_and_params: an already loaded (model, params), overriding `checkpoint`.
    timestep_respacing: "ddim25" (upstream), "ddim10", "250", ...
    use_ddim, eta, clip_denoised: sampler settings (upstream: DDIM, 0, True).
    sampling_batch_size: clips of `nframes` frames per model batch (upstream: 32 x 5 = 160); also
      the number of frames decoded and processed at a time.
    nframes: frames per clip (upstream 5); only sets the batch size at inference.
    face_det_batch_size: frames per face-detector call.
    pads: (top, bottom, left, right) pixels added to each face box (upstream `--pads`).
    face_hide_percentage: lower fraction of the crop that is regenerated (upstream 0.5).
    sampling_seed: seed of the initial noise shared by all frames.
    dtype: model computation dtype (jnp.float32 or jnp.bfloat16).
    detector: a `faces.FaceDetector`; default dlib HOG (S3FD if `s3fd_path` is given).
    progress: tqdm progress bars.
    blend: "feather" (soft mask + colour matching, `blend.py`) or "hard" (upstream's paste).
    feather: feather ramp as a fraction of the face box's shorter side.
    color_match: match the generated lower face's colour statistics to the frame (feather).
    face: which face with several: "largest", an index (0 = leftmost), "x,y" (a point in the
      first frame) or a `tracking.FaceSelector`; it is tracked through the video.
    audio_longer: "pingpong" (loop the video back and forth to the audio's length) or "trim"
      (stop at the video's end).
    crossfade_frames: frames over which the generated face fades in/out next to frames without
      a face.
    scene_cut_threshold: colour-histogram distance that counts as a scene cut (restarts face
      tracking); > 1 disables.
    s3fd_path: upstream S3FD weights (`.pth` or converted `.npz`): detect faces with S3FD.
    audio_sample_rate: sample rate of array `audio`.
    device: JAX device to run on (None: the default device).

  Returns:
    A `LipsyncResult` with as many frames as the audio covers at the video's frame rate (or
    timestamps), and the timestamps.

  Raises:
    VideoError, AudioError, CheckpointError, LipsyncError (all ValueError): bad inputs, with
    a message that says what to do.
  """
  opts = _Settings(timestep_respacing, use_ddim, eta, clip_denoised, sampling_batch_size,
                   nframes, face_hide_percentage, sampling_seed, blend, feather, color_match,
                   progress)
  run = _prepare(video, audio, checkpoint=checkpoint, model_and_params=model_and_params,
                 dtype=dtype, detector=detector, s3fd_path=s3fd_path, face=face, pads=pads,
                 face_det_batch_size=face_det_batch_size, audio_longer=audio_longer,
                 crossfade_frames=crossfade_frames, scene_cut_threshold=scene_cut_threshold,
                 audio_sample_rate=audio_sample_rate, opts=opts, device=device)
  try:
    plan = run.plan
    frames = np.empty((plan.num_out, *plan.size_hw, 3), np.uint8)
    pos = 0
    for chunk, _ in run.chunks:
      frames[pos:pos + len(chunk)] = chunk
      pos += len(chunk)
  finally:
    run.source.close()
  return LipsyncResult(frames=frames, fps=plan.fps, audio=run.audio, no_face=plan.no_face,
                       times=plan.out_times, scene_cuts=plan.scene_cuts)


def lipsync_to_file(video: str | os.PathLike | video_lib.Video,
                    audio: str | os.PathLike | np.ndarray,
                    out_path: str | os.PathLike,
                    **kwargs) -> LipsyncSummary:
  """`lipsync`, streamed: decode -> detect -> sample -> encode chunk by chunk into `out_path`.

  Memory does not grow with the video's length (two decoding passes: one to find and track
  the face, one to generate; only `sampling_batch_size * nframes` frames are held at a time).
  The file (H.264 + AAC) appears only when complete. Variable-frame-rate input keeps its
  timestamps (90 kHz time base); constant-rate input is written at its frame rate.

  Args:
    video, audio: as `lipsync`.
    out_path: output video (`.mp4`).
    **kwargs: any option of `lipsync`.

  Returns:
    A `LipsyncSummary` (no frames).
  """
  progress = kwargs.get("progress", True)
  opts = _Settings(**{f.name: kwargs.pop(f.name) for f in dataclasses.fields(_Settings)
                      if f.name in kwargs})
  opts.progress = progress
  defaults = dict(checkpoint=RANDOM_CHECKPOINT, model_and_params=None, dtype=jnp.float32,
                  detector=None, s3fd_path=None, face="largest", pads=(0, 0, 0, 0),
                  face_det_batch_size=64, audio_longer="pingpong", crossfade_frames=3,
                  scene_cut_threshold=0.5, audio_sample_rate=audio_lib.SAMPLE_RATE, device=None)
  unknown = set(kwargs) - set(defaults)
  if unknown:
    raise TypeError(f"lipsync_to_file got unexpected options {sorted(unknown)}")
  run = _prepare(video, audio, opts=opts, **{**defaults, **kwargs})
  plan = run.plan
  try:
    with encode.VideoWriter(out_path, plan.fps, run.audio, audio_lib.SAMPLE_RATE) as writer:
      for frames, times in run.chunks:
        writer.write(frames, times if plan.vfr else None)
  finally:
    run.source.close()
  return LipsyncSummary(out_path=pathlib.Path(out_path), num_frames=plan.num_out, fps=plan.fps,
                        no_face=plan.no_face, times=plan.out_times, scene_cuts=plan.scene_cuts)


# ---------------------------------------------------------------------------------------------
# Command line.

_VIDEO = flags.DEFINE_string("video_path", None, "input video, or a still image of a face")
_AUDIO = flags.DEFINE_string("audio_path", None, "driving speech: any audio file or video")
_OUT = flags.DEFINE_string("out_path", None, "output .mp4 (H.264 + AAC)")
_CKPT = flags.DEFINE_string("checkpoint", None,
                            "checkpoint directory from diff2lip_jax.convert, or 'random' for "
                            "the released architecture with random weights (pipeline check)")
_RESPACING = flags.DEFINE_string("timestep_respacing", "ddim25", "sampling steps: ddim25, ddim10, 250...")
_USE_DDIM = flags.DEFINE_boolean("use_ddim", True, "DDIM (True) or ancestral sampling")
_ETA = flags.DEFINE_float("eta", 0.0, "DDIM eta")
_CLIP = flags.DEFINE_boolean("clip_denoised", True, "clamp predicted x0 to [-1, 1] each step")
_BATCH = flags.DEFINE_integer("sampling_batch_size", 32, "clips of --nframes frames per batch "
                              "(also the frames decoded and held at a time)")
_NFRAMES = flags.DEFINE_integer("nframes", 5, "frames per clip")
_DET_BATCH = flags.DEFINE_integer("face_det_batch_size", 64, "frames per face-detector call")
_PADS = flags.DEFINE_list("pads", ["0", "0", "0", "0"], "top,bottom,left,right box padding (px)")
_HIDE = flags.DEFINE_float("face_hide_percentage", 0.5, "lower fraction of the face regenerated")
_SEED = flags.DEFINE_integer("sampling_seed", 7, "seed of the shared initial noise")
_DTYPE = flags.DEFINE_enum("dtype", "auto", ["auto", "float32", "bfloat16"],
                           "compute dtype; auto: bfloat16 on GPU/TPU, float32 on CPU")
_BLEND = flags.DEFINE_enum("blend", "feather", list(blend.BLEND_MODES),
                           "feather: soft mask + colour matching; hard: upstream's rectangle")
_FEATHER = flags.DEFINE_float("feather", 0.1, "feather ramp, fraction of the face box's side")
_COLOR = flags.DEFINE_boolean("color_match", True, "match the generated lower face's colour "
                              "statistics to the surrounding skin (--blend=feather)")
_FACE = flags.DEFINE_string("face", "largest", "which face with several: largest, an index "
                            "(0 = leftmost) or a point x,y in the first frame; it is tracked")
_AUDIO_LONGER = flags.DEFINE_enum("audio_longer", "pingpong", list(AUDIO_LONGER),
                                  "audio longer than the video: play the video back and forth "
                                  "(pingpong) or cut the audio (trim)")
_CROSSFADE = flags.DEFINE_integer("crossfade_frames", 3, "frames of cross-fade next to frames "
                                  "without a face")
_CUT = flags.DEFINE_float("scene_cut_threshold", 0.5, "histogram distance of a scene cut "
                          "(restarts face tracking); >1 disables")
_S3FD = flags.DEFINE_string("s3fd_path", None, "upstream S3FD weights (s3fd-619a316812.pth, or "
                            "an .npz from `python -m diff2lip_jax.s3fd`): detect faces with "
                            "S3FD as upstream instead of dlib")
_DET_MAX_SIDE = flags.DEFINE_integer("face_det_max_side", 0, "dlib: detect on a copy downscaled "
                                     "to this longer side (faster on HD video); 0: full size")
_FILELIST = flags.DEFINE_string("filelist", None, "batch mode: '<audio> <video>' per line, "
                                "relative to --data_root (upstream's filelist format)")
_DATA_ROOT = flags.DEFINE_string("data_root", ".", "folder the --filelist paths are relative to")
_SAMPLE_PATH = flags.DEFINE_string("sample_path", "outputs", "batch mode: output folder")
_OVERWRITE = flags.DEFINE_boolean("overwrite", False, "batch mode: redo finished outputs")
_DISTRIBUTED = flags.DEFINE_boolean("distributed", False, "call jax.distributed.initialize() "
                                    "(multi-host batch runs)")


def _dtype(name: str):
  if name == "auto":
    return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
  return jnp.dtype(name)


def _options(pads: list[int]) -> dict[str, Any]:
  """`lipsync_to_file` keyword arguments from the flags."""
  return dict(timestep_respacing=_RESPACING.value, use_ddim=_USE_DDIM.value, eta=_ETA.value,
              clip_denoised=_CLIP.value, sampling_batch_size=_BATCH.value,
              nframes=_NFRAMES.value, face_det_batch_size=_DET_BATCH.value, pads=pads,
              face_hide_percentage=_HIDE.value, sampling_seed=_SEED.value,
              blend=_BLEND.value, feather=_FEATHER.value, color_match=_COLOR.value,
              face=tracking.parse_face(_FACE.value), audio_longer=_AUDIO_LONGER.value,
              crossfade_frames=_CROSSFADE.value, scene_cut_threshold=_CUT.value)


def _make_detector(device: Any = None) -> faces.FaceDetector:
  """The face detector the flags ask for."""
  if _S3FD.value:
    return faces.make_detector("s3fd", path=_S3FD.value, device=device,
                                  batch_size=min(_DET_BATCH.value, 16))
  return faces.make_detector("dlib", max_side=_DET_MAX_SIDE.value or None)


def _run_filelist(options: dict[str, Any]) -> None:
  from diff2lip_jax.inference import batch as batch_lib  # pylint: disable=g-import-not-at-top
  devices = jax.local_devices()
  lock = threading.Lock()
  loaded: dict[Any, Any] = {}

  def model_on(device):
    """(model, params on `device`), loaded once, when the first pair needs it."""
    with lock:
      if "model" not in loaded:
        loaded["model"], loaded["params"] = load_model(_CKPT.value, _dtype(_DTYPE.value))
      if device not in loaded:
        loaded[device] = (jax.device_put(loaded["params"], device) if len(devices) > 1
                          else loaded["params"])
      return loaded["model"], loaded[device]

  def run_one(video, audio, out, device):
    lipsync_to_file(video, audio, out, model_and_params=model_on(device),
                    detector=_make_detector(device), device=device if len(devices) > 1 else None,
                    progress=len(devices) == 1, **options)

  report = batch_lib.run_filelist(_FILELIST.value, _DATA_ROOT.value, _SAMPLE_PATH.value,
                                  run_one, overwrite=_OVERWRITE.value, devices=devices)
  print(f"filelist: {len(report.done)} written, {len(report.skipped)} already done, "
        f"{len(report.failed)} failed (host {jax.process_index()} of {jax.process_count()}, "
        f"{len(devices)} device(s), {report.total} items in all)")
  if report.failed:
    for item, message in report.failed:
      print(f"  line {item.line}: {item.audio} {item.video}: {message}", file=sys.stderr)
    sys.exit(f"error: {len(report.failed)} item(s) failed; fix them and rerun (finished outputs "
             "are skipped)")


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every read at INFO.
  if _DISTRIBUTED.value:
    jax.distributed.initialize()
  try:
    pads = [int(p) for p in _PADS.value]
    if len(pads) != 4:
      raise ValueError
  except ValueError:
    sys.exit(f"error: --pads needs 4 integers top,bottom,left,right; got {','.join(_PADS.value)}")
  if _CKPT.value is None:
    sys.exit("error: --checkpoint is required (a converted checkpoint directory, or 'random')")
  try:
    options = _options(pads)
  except ValueError as e:
    sys.exit(f"error: {e}")
  if _FILELIST.value:
    try:
      _run_filelist(options)
    except ValueError as e:
      sys.exit(f"error: {e}")
    return
  missing = [f"--{f.name}" for f in (_VIDEO, _AUDIO, _OUT) if f.value is None]
  if missing:
    sys.exit(f"error: {', '.join(missing)} required (or --filelist for batch mode)")
  out_path = pathlib.Path(_OUT.value)
  if out_path.suffix.lower() not in (".mp4", ".mov", ".mkv"):
    sys.exit(f"error: --out_path {out_path} should end in .mp4")
  try:
    summary = lipsync_to_file(_VIDEO.value, _AUDIO.value, out_path, checkpoint=_CKPT.value,
                              detector=_make_detector(), dtype=_dtype(_DTYPE.value), **options)
  except ValueError as e:
    sys.exit(f"error: {e}")
  print(f"wrote {out_path}: {summary.num_frames} frames at {summary.fps:g} fps"
        + (f"; no face in frames {summary.no_face} (passed through)" if summary.no_face else ""))


if __name__ == "__main__":
  app.run(main)
