"""In-sync / off-sync pairs for training the Wav2Lip lip-sync expert (grain, same tfds data).

    it = make_sync_iterator(DATA_DIR, "diff2lip_voxceleb2", "train", per_host_batch=64, seed=0)
    batch = next(it)

Wav2Lip `color_syncnet_train.py` (`Dataset.__getitem__`), on the clips `prepare` wrote: per
element (one clip, as `pipeline`), draw a window start k among `windows.valid_window_starts`
and a label y in {0, 1} with probability 1/2 each. The audio is always the clip's sync-loss
window of frame k (the `mel` of `pipeline.sample_example`: `mel[:, s:s+16]`,
s = `windows.sync_window_start(k / fps)`, no lead). The faces are

* y = 1 (in sync): frames k .. k+4, the frames the audio belongs to;
* y = 0 (off sync): frames r .. r+4 of the same clip, r drawn by
  `windows.sample_reference_start` (|r - k| >= 5: the two windows do not overlap). Wav2Lip only
  asks r != k, so its negatives may be shifted by a single frame (40 ms), which is nearly in
  sync on slow speech and silence; here every negative is >= 0.2 s (at 25 fps) off.

Batch (numpy, B = per_host_batch):

  faces        [B, 5, 128, 128, 3] uint8  face crops (RGB, 0..255); the train step takes the
                                          lower halves at 48x96 (`losses.sync_face_input`, the
                                          layout the generator's sync loss feeds the expert)
  mel          [B, 80, 16] float32        the audio window (in [-4, 4])
  label        [B] float32                1.0 in sync, 0.0 off sync
  clip_index   [B] int64                  record index in the split
  start_frame  [B] int32                  k, the frame the audio window starts at
  face_start   [B] int32                  first face frame (k if label 1, r if 0)
  flipped      [B] bool                   mirrored left-right (`random_flip`; off by default)

Shuffling, per-host sharding, epochs, grain workers and checkpointable iterator state are
`pipeline.make_train_dataset`'s: only the per-record transform differs (`SyncPairSampler`).
"""

from __future__ import annotations

import os
from typing import Any

import grain
import numpy as np

from diff2lip_jax.media import audio
from diff2lip_jax.data import pipeline
from diff2lip_jax.data import windows

NFRAMES = windows.NFRAMES


def sample_pair(record: dict[str, Any], clip_index: int, rng: np.random.Generator,
                random_flip: bool = False,
                nframes: int = NFRAMES) -> dict[str, np.ndarray] | None:
  """Draws one labelled (faces, audio) pair from one clip record (see the module docstring).

  Args:
    record: a record of the tfds dataset: `frames` (N JPEG byte strings or decoded
      [H, W, 3] uint8 arrays), `mel` [T, 80] float32, `fps`.
    clip_index: record index, copied to the example.
    rng: generator for the window, the label, the off-sync window and the flip.
    random_flip: mirror the faces left-right with probability 1/2 (sync is unaffected).
    nframes: frames per window (Wav2Lip `syncnet_T` = 5).

  Returns:
    The example dict, or None if the clip offers no window (too short; `prepare` already
    leaves such clips out).
  """
  frames = record["frames"]
  n, fps = len(frames), float(record["fps"])
  mel = np.asarray(record["mel"], np.float32).T  # [80, T]
  starts = windows.valid_window_starts(n, mel.shape[1], fps, nframes)
  if starts.size == 0:
    return None
  k = int(starts[rng.integers(starts.size)])
  in_sync = bool(rng.random() < 0.5)
  f = k if in_sync else windows.sample_reference_start(k, n, rng, nframes)
  flip = bool(random_flip and rng.random() < 0.5)
  faces = pipeline.decode_frames(frames, f, nframes)
  if flip:
    faces = faces[:, :, ::-1]
  s = int(windows.sync_window_start(audio.frame_times(n, fps)[k]))
  return {
      "faces": np.ascontiguousarray(faces),
      "mel": np.ascontiguousarray(mel[:, s:s + audio.MEL_WINDOW]),
      "label": np.float32(in_sync),
      "clip_index": np.int64(clip_index),
      "start_frame": np.int32(k),
      "face_start": np.int32(f),
      "flipped": np.bool_(flip),
  }


class SyncPairSampler(pipeline.ClipSampler):
  """Grain random-map transform: record index -> `sample_pair` of that record (or None)."""

  def __call__(self, clip_index: int, rng: np.random.Generator) -> dict[str, np.ndarray] | None:
    return sample_pair(self.source[int(clip_index)], int(clip_index), rng, self.random_flip,
                       self.nframes)


def make_sync_iterator(data_dir: str | os.PathLike,
                       dataset_name: str = "diff2lip_voxceleb2",
                       split: str = "train",
                       per_host_batch: int = 64,
                       seed: int = 0,
                       num_epochs: int | None = None,
                       process_index: int | None = None,
                       process_count: int | None = None,
                       worker_count: int = 0,
                       **kwargs) -> grain.DatasetIterator:
  """A checkpointable iterator over per-host batches of expert training pairs.

  Arguments as `pipeline.make_train_iterator` (`**kwargs`: `random_flip`, `drop_remainder`,
  `read_threads`, `prefetch_buffer_size`, `worker_buffer_size`). An epoch draws one pair per
  clip of this host; the stream is deterministic given `seed`.

  Returns:
    `grain.DatasetIterator` of the batches in the module docstring (`get_state`/`set_state`).
  """
  ds = pipeline.make_train_dataset(data_dir, dataset_name, split, per_host_batch, seed,
                                   num_epochs, process_index, process_count, worker_count,
                                   sampler_cls=SyncPairSampler, **kwargs)
  return iter(ds)
