"""Which 5-frame training windows and reference windows a clip offers (pure NumPy).

Shared by `prepare` (to drop clips too short to train on) and the grain pipeline (to sample).
Conventions, reproduced from Wav2Lip `hq_wav2lip_train.py` (`Dataset.get_window`,
`crop_audio_window`, `get_segmented_mels`), which the shapes of Diff2Lip's `tfg_data_util.py`
mirror (spec §1.4, §4.3, §4.4):

* A training window is `NFRAMES` = 5 consecutive frames k .. k+4.
* Frame j is paired with the per-frame mel window `audio.mel_windows` gives it: 16 mel steps
  starting 0.04 s before the frame's time (Wav2Lip's `crop_audio_window(mels, i - 2)` for the
  1-based frame i = j + 1).
* Wav2Lip rejects windows whose first per-frame mel window would start before the audio
  (`start_frame_num - 2 < 0`, i.e. k = 0); so does this module: k >= 1. For k = 0 the
  0.04 s lead would be clipped and frames 0 and 1 would share one window.
* The sync-loss window of the clip starts at the first frame's time, without the lead:
  `mel[:, int(80 * k / fps) : +16]` (Wav2Lip `crop_audio_window(mel, start_frame)`).
* The reference ("wrong") window is 5 consecutive frames r .. r+4 of the same clip. Wav2Lip only
  asks r != k, so its wrong window may overlap the target; here it must not overlap at all:
  |r - k| >= 5, so every reference frame lies outside the target window and is >= 5 frames
  (0.2 s at 25 fps) away from the frame it is paired with. Reference frames need no audio.
"""

from __future__ import annotations

import numpy as np

from diff2lip_jax.media import audio

NFRAMES = 5  # Frames per training example (upstream `nframes`, Wav2Lip `syncnet_T`).
_INDEX_EPS = 1e-6  # Guards int() against float error, as in audio.window_start_indices.


def sync_window_start(time_s: float | np.ndarray) -> np.ndarray:
  """First mel step of the sync-loss window of a clip whose first frame is at `time_s` seconds.

  Wav2Lip: `int(80 * start_frame / fps)`, here `floor(80 * t + 1e-6)` (no 0.04 s lead).
  Returns int64 with the shape of `time_s`.
  """
  t = np.asarray(time_s, np.float64)
  return np.floor(audio.MEL_STEPS_PER_SECOND * t + _INDEX_EPS).astype(np.int64)


def valid_window_starts(num_frames: int, num_mel_steps: int, fps: float,
                        nframes: int = NFRAMES) -> np.ndarray:
  """All first frames k of training windows that a clip supports.

  k is valid when (see the module docstring) 1 <= k <= num_frames - nframes, the per-frame mel
  windows of frames k .. k+nframes-1 and the sync window fit in `num_mel_steps`, and a
  non-overlapping reference window exists (k >= nframes or k + 2 nframes <= num_frames).

  Args:
    num_frames: N, frames in the clip.
    num_mel_steps: T, steps of the clip's mel spectrogram (80 per second).
    fps: frame rate; frame j is at j / fps seconds.
    nframes: window length in frames.

  Returns:
    [K] int64 sorted valid starts (empty if the clip is too short to train on).
  """
  n, t_mel = int(num_frames), int(num_mel_steps)
  if n < 2 * nframes or t_mel < audio.MEL_WINDOW:
    return np.zeros((0,), np.int64)
  times = audio.frame_times(n, fps)
  k = np.arange(1, n - nframes + 1)
  last_ok = audio.window_start_indices(times[k + nframes - 1]) + audio.MEL_WINDOW <= t_mel
  sync_ok = sync_window_start(times[k]) + audio.MEL_WINDOW <= t_mel
  ref_ok = (k >= nframes) | (k + 2 * nframes <= n)
  return k[last_ok & sync_ok & ref_ok].astype(np.int64)


def reference_starts(start: int, num_frames: int, nframes: int = NFRAMES) -> np.ndarray:
  """[M] int64 all first frames r of reference windows for the window at `start`: r in
  [0, num_frames - nframes] with |r - start| >= nframes (no overlap)."""
  r = np.arange(0, int(num_frames) - nframes + 1)
  return r[np.abs(r - int(start)) >= nframes].astype(np.int64)


def sample_reference_start(start: int, num_frames: int, rng: np.random.Generator,
                           nframes: int = NFRAMES) -> int:
  """Uniformly draws one of `reference_starts(start, num_frames, nframes)`."""
  low = max(int(start) - nframes + 1, 0)  # candidates 0 .. start - nframes
  # start + nframes .. num_frames - nframes:
  high = max(int(num_frames) - nframes - (int(start) + nframes) + 1, 0)
  if low + high == 0:
    raise ValueError(f"no reference window for start {start} in a {num_frames}-frame clip")
  u = int(rng.integers(low + high))
  return u if u < low else int(start) + nframes + (u - low)
