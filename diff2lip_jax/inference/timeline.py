"""The output timeline: which source frame, timestamp and mel window each output frame gets.

The audio is the clock. At any frame rate (including variable), output frame k keeps its
source frame's timestamp; its 16-step (0.2 s) mel window starts 0.04 s before that timestamp
(upstream pairs 25-fps frame j with the window starting at frame max(j - 1, 0); spec §4.3). A video
shorter than the audio is played back and forth ("pingpong") or the audio is cut ("trim").

Frame counts:
* "padded" (default): every frame whose display interval ends within the audio; the mel is
  computed on the audio plus 0.2 s of silence so that the last frames get full windows;
* "last_full_window" (upstream `generate.py`): N = min(#frames, #full 16-step windows of the
  unpadded mel), the written audio `wav[:int(N / fps * 16000)]`.
"""

from __future__ import annotations

import numpy as np

from diff2lip_jax.media import audio as audio_lib

AUDIO_LONGER = ("pingpong", "trim")


def pingpong_indices(num_out: int, num_src: int) -> np.ndarray:
  """Source frame for each output frame: 0..n-1, then back n-2..1, and again. [num_out] int."""
  if num_src == 1:
    return np.zeros(num_out, np.int64)
  period = 2 * (num_src - 1)
  k = np.arange(num_out) % period
  return np.where(k < num_src, k, period - k)


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


def upstream_frame_count(times: np.ndarray, num_samples: int) -> int:
  """Upstream's N: leading output frames whose full 16-step window fits in the *unpadded* mel of
  `num_samples` 16 kHz samples (`1 + num_samples // 200` mel steps).

  Args:
    times: [N0] output timestamps in seconds.
    num_samples: length of the driving audio at 16 kHz.
  """
  steps = 1 + int(num_samples) // audio_lib.HOP_LENGTH
  return audio_lib.num_windows(steps, np.asarray(times, np.float64))
