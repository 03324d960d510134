"""Grain training pipeline: random 5-frame windows of the prepared clips, as upstream trains.

    it = make_train_iterator(DATA_DIR, "diff2lip_voxceleb2", "train", per_host_batch=8, seed=0)
    batch = next(it)

Every element is one clip (an epoch visits each clip of the split once, in a fresh order;
Wav2Lip's `Dataset.__getitem__` likewise draws one random window from one video). For it, a
window start k, a reference window r and an optional flip are drawn from a NumPy generator
that grain seeds from `seed` and the element's position in the *global* stream, so the stream
is deterministic given the seed, differs across seeds and epochs, and is resumable.

Batch (numpy, B = per_host_batch; conventions in `windows`, spec §1.4, §4.3, §4.4):

  image        [B, 5, 128, 128, 3] uint8  frames k .. k+4 of the clip (RGB, 0..255)
  ref_img      [B, 5, 128, 128, 3] uint8  frames r .. r+4, a Wav2Lip "wrong window" of the
                                          same clip that does not overlap the target:
                                          |r - k| >= 5, so reference j (frame r+j) is >= 5
                                          frames away from frame k+j
  indiv_mels   [B, 5, 80, 16] float32     per-frame mel windows, exactly
                                          `audio.mel_windows(mel, frame_times)[k + j]`
                                          (16 steps from 0.04 s before each frame)
  mel          [B, 80, 16] float32        sync-loss window of the clip: mel[:, s:s+16],
                                          s = int(80 k / fps), no lead (Wav2Lip
                                          `crop_audio_window`)
  clip_index   [B] int64                  record index in the split
                                          (`tfds.data_source(...)[clip_index]`)
  start_frame  [B] int32                  k
  ref_start    [B] int32                  r
  flipped      [B] bool                   whether the example was mirrored

k >= 1 as in Wav2Lip (no clipped first window). With `random_flip`, half of the examples
are mirrored left-right, target and reference frames together: the mouth shape stays the same
and in time with the audio (speech has no handedness), so lip sync is preserved; upstream's
augmentation is unknown (spec §3), so the default is off. The lower-half mask and the
[-1, 1] scaling are left to the train step.

Clips too short for a window and a non-overlapping reference window are dropped (`prepare`
already leaves them out, so in practice none is).

Hosts: one global stream (shuffle, per-element draws) is the same for any host count; global
batch j is its elements j*G .. j*G+G-1 (G = process_count * per_host_batch) and host h takes
the h-th run of per_host_batch of them (`HostSlice`), which is where
`jax.make_array_from_process_local_data` puts host h's rows. So hosts draw different clips,
windows, references and flips, and the global batch of 1, 2 or N hosts is the same draw from
the whole dataset (resuming with another host count: `restart_at_batch`).

Checkpointing: the returned `grain.DatasetIterator` has `get_state()` / `set_state()`; Orbax
saves it next to the train state (one JSON file per process) through grain's handler:

    mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(train_state),
        data=grain.checkpoint.CheckpointSave(train_iter)))
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_train_state),
        data=grain.checkpoint.CheckpointRestore(train_iter)))  # restores train_iter in place
"""

from __future__ import annotations

import os
import threading
from typing import Any

from absl import flags
import grain
import numpy as np
import tensorflow_datasets as tfds

from diff2lip_jax.media import audio
from diff2lip_jax.data import clips
from diff2lip_jax.data import windows

NFRAMES = windows.NFRAMES


class _KeepEncoded(tfds.decode.SkipDecoding):
  """tfds decoder that leaves a `Sequence(Image)` as its encoded bytes in the NumPy path
  (tfds 4.9's `SkipDecoding` lacks `decode_batch_example_np`); frames are decoded on demand."""

  def decode_batch_example_np(self, serialized_example):
    return serialized_example


def decode_frames(frames: Any, start: int, count: int) -> np.ndarray:
  """[count, H, W, 3] uint8 frames start .. start+count-1 of a record's `frames` (JPEG byte
  strings, decoded here, or already decoded arrays)."""
  def decode(f):
    return clips.decode_jpeg(f) if isinstance(f, bytes) else np.asarray(f, np.uint8)
  return np.stack([decode(frames[i]) for i in range(start, start + count)])


def sample_example(record: dict[str, Any], clip_index: int, rng: np.random.Generator,
                   random_flip: bool = False,
                   nframes: int = NFRAMES) -> dict[str, np.ndarray] | None:
  """Draws one training example from one clip record (see the module docstring).

  Args:
    record: a record of the tfds dataset, with `frames` as a sequence of N JPEG byte strings
      (or decoded [128, 128, 3] uint8 arrays), `mel` [T, 80] float32 and `fps`.
    clip_index: record index, copied to the example.
    rng: generator for the window, the reference window and the flip.
    random_flip: mirror the example left-right with probability 1/2.
    nframes: window length in frames.

  Returns:
    The example dict, or None if the clip offers no window (too short), which the pipeline
    drops; `prepare` already leaves such clips out.
  """
  frames = record["frames"]
  n, fps = len(frames), float(record["fps"])
  mel = np.ascontiguousarray(np.asarray(record["mel"], np.float32).T)  # [80, T]
  starts = windows.valid_window_starts(n, mel.shape[1], fps, nframes)
  if starts.size == 0:
    return None
  k = int(starts[rng.integers(starts.size)])
  r = windows.sample_reference_start(k, n, rng, nframes)
  flip = bool(random_flip and rng.random() < 0.5)

  image = decode_frames(frames, k, nframes)
  ref = decode_frames(frames, r, nframes)
  if flip:
    image, ref = image[:, :, ::-1], ref[:, :, ::-1]
  times = audio.frame_times(n, fps)
  s = int(windows.sync_window_start(times[k]))
  return {
      "image": np.ascontiguousarray(image),
      "ref_img": np.ascontiguousarray(ref),
      "indiv_mels": audio.mel_windows(mel, times[k:k + nframes]),  # [5, 80, 16]
      "mel": np.ascontiguousarray(mel[:, s:s + audio.MEL_WINDOW]),
      "clip_index": np.int64(clip_index),
      "start_frame": np.int32(k),
      "ref_start": np.int32(r),
      "flipped": np.bool_(flip),
  }


class ClipSampler:
  """Grain random-map transform: record index -> `sample_example` of that record (or None).

  Opens the tfds data source lazily, once per process (it is not pickled to grain workers).
  """

  def __init__(self, data_dir: str, dataset_name: str, split: str, random_flip: bool = False,
               nframes: int = NFRAMES):
    self.data_dir, self.dataset_name, self.split = data_dir, dataset_name, split
    self.random_flip = random_flip
    self.nframes = nframes
    self._source = None
    self._lock = threading.Lock()

  def __getstate__(self) -> dict[str, Any]:
    state = self.__dict__.copy()
    state["_source"] = None
    del state["_lock"]
    return state

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__dict__.update(state)
    self._lock = threading.Lock()

  @property
  def source(self):
    """The tfds ArrayRecord data source of the split (frames left JPEG-encoded)."""
    if self._source is None:
      with self._lock:
        if self._source is None:
          self._source = open_source(self.data_dir, self.dataset_name, self.split)
    return self._source

  def __call__(self, clip_index: int, rng: np.random.Generator) -> dict[str, np.ndarray] | None:
    return sample_example(self.source[int(clip_index)], int(clip_index), rng,
                          self.random_flip, self.nframes)


def open_source(data_dir: str | os.PathLike, dataset_name: str, split: str):
  """`tfds.data_source` of a prepared split with the frames left JPEG-encoded (bytes)."""
  return tfds.data_source(dataset_name, split=split, data_dir=os.fspath(data_dir),
                          decoders={"frames": _KeepEncoded()})


class HostSlice(grain.MapDataset):
  """This host's elements of a global stream: of every `process_count * per_host_batch`
  consecutive elements (one global batch), the `process_index`-th run of `per_host_batch`."""

  def __init__(self, parent: grain.MapDataset, process_index: int, process_count: int,
               per_host_batch: int):
    super().__init__(parent)
    if not 0 <= process_index < process_count:
      raise ValueError(f"need 0 <= process_index < process_count, got {process_index}, "
                       f"{process_count}")
    self._host, self._hosts, self._per_host = process_index, process_count, per_host_batch
    self._global = process_count * per_host_batch
    self._length = len(parent) // self._global * per_host_batch

  def __len__(self) -> int:
    return self._length

  def parent_index(self, index: int) -> int:
    """The global stream position of this host's element `index`."""
    batch, offset = divmod(index, self._per_host)
    return batch * self._global + self._host * self._per_host + offset

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._parent[self.parent_index(index)]

  def __str__(self) -> str:
    return f"HostSlice(host {self._host} of {self._hosts}, {self._per_host} per batch)"


def make_train_dataset(data_dir: str | os.PathLike,
                       dataset_name: str = "diff2lip_voxceleb2",
                       split: str = "train",
                       per_host_batch: int = 8,
                       seed: int = 0,
                       num_epochs: int | None = None,
                       process_index: int | None = None,
                       process_count: int | None = None,
                       worker_count: int = 0,
                       *,
                       random_flip: bool = False,
                       sampler_cls: type[ClipSampler] = ClipSampler,
                       drop_remainder: bool = True,
                       read_threads: int = 4,
                       prefetch_buffer_size: int = 16,
                       worker_buffer_size: int = 2) -> grain.IterDataset:
  """The batched grain `IterDataset` of `make_train_iterator` (same arguments).

  `sampler_cls` is the per-record random-map transform, built as `sampler_cls(data_dir,
  dataset_name, split, random_flip=random_flip)`: `ClipSampler` (the generator's examples) or a
  subclass such as `sync_pairs.SyncPairSampler` (the SyncNet expert's pairs).
  """
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if per_host_batch < 1:
    raise ValueError(f"per_host_batch must be >= 1, got {per_host_batch}")
  data_dir = os.fspath(data_dir)
  num_clips = len(open_source(data_dir, dataset_name, split))
  sampler = sampler_cls(data_dir, dataset_name, split, random_flip=random_flip)
  ds = (grain.MapDataset.range(num_clips)
        .seed(seed)
        .shuffle()
        .repeat(num_epochs)
        .random_map(sampler))  # None (clip too short) is dropped by to_iter_dataset.
  ds = HostSlice(ds, process_index, process_count, per_host_batch)
  if len(ds) == 0:
    raise ValueError(f"split {split!r}: {num_clips} clips x {num_epochs} epochs do not fill one "
                     f"global batch of {process_count} x {per_host_batch}")
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                               prefetch_buffer_size=prefetch_buffer_size))
  it_ds = it_ds.batch(per_host_batch, drop_remainder=drop_remainder)
  if worker_count > 0:
    if not flags.FLAGS.is_parsed():
      # grain 0.2's worker start-up reads an absl flag; outside an absl program (pytest,
      # notebooks) that fails unless flags count as parsed. Their defaults are kept.
      flags.FLAGS.mark_as_parsed()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=worker_count, per_worker_buffer_size=worker_buffer_size))
  return it_ds


def make_train_iterator(data_dir: str | os.PathLike,
                        dataset_name: str = "diff2lip_voxceleb2",
                        split: str = "train",
                        per_host_batch: int = 8,
                        seed: int = 0,
                        num_epochs: int | None = None,
                        process_index: int | None = None,
                        process_count: int | None = None,
                        worker_count: int = 0,
                        **kwargs) -> grain.DatasetIterator:
  """A checkpointable iterator over per-host training batches (see the module docstring).

  Args:
    data_dir: tfds data dir holding the prepared dataset.
    dataset_name: tfds name (`diff2lip_voxceleb2`, `diff2lip_lrw`, or a custom one).
    split: "train", "val" or "test".
    per_host_batch: examples per batch on this host.
    seed: seeds the shuffle, the window/reference choice and the flips.
    num_epochs: passes over this host's clips (None: forever); the last incomplete batch is
      dropped.
    process_index, process_count: this host and the number of hosts (default
      `jax.process_index()`, `jax.process_count()`).
    worker_count: grain worker processes (`mp_prefetch`; 0: threads in this process only).
    **kwargs: `random_flip` (False), `sampler_cls` (`ClipSampler`), `drop_remainder` (True),
      `read_threads` (4), `prefetch_buffer_size` (16), `worker_buffer_size` (2).

  Returns:
    `grain.DatasetIterator` of dicts of numpy arrays; supports `get_state()` / `set_state()`.
  """
  ds = make_train_dataset(data_dir, dataset_name, split, per_host_batch, seed, num_epochs,
                          process_index, process_count, worker_count, **kwargs)
  return iter(ds)


def restart_at_batch(iterator: grain.DatasetIterator, batches: int, per_host_batch: int) -> None:
  """Moves a fresh iterator of `make_train_iterator` to global batch `batches` (the state an
  uninterrupted run has there, as long as no clip was dropped): resuming a checkpoint written
  by another host count, whose per-host iterator files do not fit.

  Raises:
    ValueError: the iterator's state is not a plain position (grain workers, `worker_count` > 0).
  """
  state = iterator.get_state()
  if set(state) != {"next_index"}:
    raise ValueError("the data iterator cannot be moved to a step with grain workers: resume "
                     "with the host count that wrote the checkpoint, or set "
                     "--config.data.worker_count=0")
  iterator.set_state({"next_index": int(batches) * int(per_host_batch)})
