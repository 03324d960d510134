"""The first pass of the inference core: find the face in every frame and lay out the output.

`analyze` decodes the video once (only up to the audio's end plus the smoothing look-ahead),
finds every face in every frame, detects scene cuts, picks one face (`options.face`) and tracks
it, pads and smooths its boxes over 5 frames within each scene (upstream `face_detect` +
`get_smoothened_boxes`, spec §4.2), and lays out the output frames on the audio's clock
(`timeline`). Nothing but boxes and timestamps is kept, so memory does not grow with the video.

`make_detector` is the one place that decides which detector a run uses.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import numpy as np
from absl import logging
from tqdm.auto import tqdm

from diff2lip_jax.inference import crops, faces, timeline, tracking
from diff2lip_jax.inference.options import LipsyncOptions
from diff2lip_jax.media import encode
from diff2lip_jax.media import video as video_lib

ProgressFn = Callable[[str, int, int], None]


class LipsyncError(ValueError):
  """The inputs cannot be lip-synced (e.g. no face anywhere); the message says what to do."""


@dataclasses.dataclass
class Plan:
  """What the analysis pass found and what the generation pass will produce.

  Attributes:
    size_hw: (H, W) of the frames.
    fps: nominal frame rate.
    source_times: [n] float64 times of the scanned source frames (seconds).
    boxes: [n, 4] int64 final face box per source frame (padded, smoothed).
    found: [n] bool, the tracked face was detected in that source frame.
    scene_cuts: source frames that start a new scene.
    src: [N] int64 source frame of each output frame (the model's input).
    ref_src: [N] int64 source frame of each output frame's reference.
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
  ref_src: np.ndarray
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


def make_detector(options: LipsyncOptions, checkpoint_s3fd: Any = None,
                  upstream_weights: bool = False, device: Any = None) -> faces.FaceDetector:
  """The face detector a run uses.

  `options.detector`: "s3fd" uses `options.s3fd_path`, else the checkpoint's `s3fd.npz`;
  "dlib" is dlib's HOG; "auto" is S3FD when weights are at hand, else dlib, with a warning when
  the weights are upstream's (they were trained on S3FD crops: dlib's boxes are tighter).

  Raises:
    ValueError: S3FD asked for (e.g. `preset="upstream"`) but no weights.
  """
  s3fd_path = options.s3fd_path or checkpoint_s3fd
  kind = options.detector
  if kind == "auto":
    kind = "s3fd" if s3fd_path else "dlib"
    if kind == "dlib" and upstream_weights:
      logging.warning("faces are found with dlib, but upstream's weights were trained on S3FD "
                      "crops (another scale and framing); for upstream's behaviour convert with "
                      "--s3fd_checkpoint s3fd-619a316812.pth or pass --s3fd_path")
  if kind == "s3fd":
    if not s3fd_path:
      raise ValueError("S3FD face detection needs its weights: convert the checkpoint with "
                       "--s3fd_checkpoint s3fd-619a316812.pth, or pass --s3fd_path")
    return faces.make_detector("s3fd", path=s3fd_path, device=device,
                               batch_size=min(options.face_det_batch_size, 16))
  return faces.make_detector("dlib", max_side=options.face_det_max_side or None)


def analyze(source: video_lib.FrameSource, duration: float, num_samples: int,
            options: LipsyncOptions, detector: faces.FaceDetector,
            on_progress: Optional[ProgressFn] = None) -> Plan:
  """First pass: detection, scene cuts, tracking, box smoothing and the output timeline.

  Args:
    source: the video (not yet scanned).
    duration: driving audio length in seconds.
    num_samples: driving audio length in 16 kHz samples (upstream's frame count).
    options: `crop`, `pads`, `face`, `smooth_window`, `scene_cut_threshold`,
      `face_det_batch_size`, `audio_longer`, `end`, `sampling_input_type`, `crossfade_frames`.
    detector: from `make_detector` (unused with `crop="voxceleb2"`).
    on_progress: called as ("detection", frames done, 0).

  Raises:
    LipsyncError: no face in any frame.
  """
  dets: list[tuple[np.ndarray, np.ndarray]] = []
  cuts: list[int] = []
  cutter = tracking.SceneCutDetector(options.scene_cut_threshold)
  fixed = options.crop == "voxceleb2"
  done = 0
  with tqdm(desc="face detection", unit="frame", disable=not options.progress) as bar:
    for start, frames, _ in source.scan(options.face_det_batch_size, stop_time=duration,
                                        extra_frames=options.smooth_window):
      if not fixed:
        for j, frame in enumerate(frames):
          if cutter.update(frame):
            cuts.append(start + j)
        dets.extend(faces.detect_all_frames(detector, frames))
      done += len(frames)
      bar.update(len(frames))
      if on_progress:
        on_progress("detection", done, 0)
  n = source.num_frames
  times = np.asarray(source.times, np.float64)[:n]
  fps = float(source.fps)
  if fixed:
    boxes = np.tile(crops.voxceleb2_box(*source.size_hw), (n, 1))
    found = np.ones(n, bool)
  else:
    selector = tracking.parse_face(options.face)
    raw, found = tracking.track_faces(dets, selector, cuts, max_gap=max(1, int(round(fps))))
    if not found.any():
      raise LipsyncError(f"no face found in any of the {n} frames; use a video with a visible, "
                         "roughly frontal face (dlib's HOG detector needs faces of ~80 px or "
                         "more; S3FD, --s3fd_path, finds smaller and turned faces)")
    boxes = faces.finalize_boxes(raw, found, source.size_hw, options.pads,
                                 options.smooth_window, tracking.segments_from_cuts(n, cuts))
  src, out_times, durations = timeline.output_timeline(times, fps, duration,
                                                       options.audio_longer)
  if options.end == "last_full_window":
    count = timeline.upstream_frame_count(out_times, num_samples)
    src, out_times, durations = src[:count], out_times[:count], durations[:count]
  ref_src = src
  if options.sampling_ref_type == "first_frame":
    ref_src = np.zeros_like(src)
  if options.sampling_input_type == "first_frame":
    src = np.zeros_like(src)  # upstream reconstruction: frame 0 for every output frame
  alpha = timeline.crossfade_weights(found[src], options.crossfade_frames)
  return Plan(size_hw=source.size_hw, fps=fps, source_times=times, boxes=boxes, found=found,
              scene_cuts=cuts, src=src, ref_src=ref_src, out_times=out_times, out_durations=durations,
              alpha=alpha, vfr=not encode.is_constant_rate(times, fps))

