"""Tests for diff2lip_jax.data: synthetic clips, prepare -> tfds ArrayRecord, grain pipeline.

Everything runs on small synthetic VoxCeleb2-style clips made in tmp dirs (no downloads).
"""

import os
import pathlib
import shutil
import subprocess
import sys

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds

from diff2lip_jax.inference import crops as crop_lib
from diff2lip_jax.media import audio, video
from diff2lip_jax.media import encode
from diff2lip_jax.data import build, clips, layout, pipeline, synthetic, windows

REPO = pathlib.Path(__file__).resolve().parents[1]
SECONDS = 1.2  # 30 frames at 25 fps.
NUM_FRAMES = 30
VAL_SPEAKER = "id00003"


def _truncate(src: pathlib.Path, dst: pathlib.Path, fraction: float = 0.1) -> None:
  """The first `fraction` of `src`: the moov box (faststart) and a cut inside the first packets,
  which PyAV cannot decode. (At 0.4 the cut fell between packets with one x264 setting: the
  video then reads as 6 frames and the clip fails on its audio instead.)"""
  dst.parent.mkdir(parents=True, exist_ok=True)
  data = src.read_bytes()
  dst.write_bytes(data[:int(len(data) * fraction)])


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> pathlib.Path:
  """3 speakers x 2 synthetic clips of 1.2 s, plus a truncated mp4, a 0.3 s clip and a silent
  clip (all three must be skipped)."""
  top = tmp_path_factory.mktemp("vox")
  root = top / "dev" / "mp4"  # As the official vox2_dev_mp4 archive unpacks.
  paths = synthetic.make_synthetic_dataset(root, num_ids=3, clips_per_id=2, seconds=SECONDS,
                                           seed=0)
  _truncate(paths[0], root / "id00001" / "broken00000" / "00001.mp4")
  short = synthetic.make_clip(5, seconds=0.3)
  encode.write_video(root / "id00002" / "short000000" / "00001.mp4", short.frames, 25,
                    short.audio, 16000)
  silent = np.repeat(short.frames[:1], 40, axis=0)
  encode.write_video(root / "id00002" / "noaudio0000" / "00001.mp4", silent, 25)
  return top


def _good_videos(videos: pathlib.Path, pattern: str = "id*") -> list[pathlib.Path]:
  return [p for p in sorted(videos.glob(f"dev/mp4/{pattern}/*/00001.mp4"))
          if not any(bad in str(p) for bad in ("broken", "short", "noaudio"))]


@pytest.fixture(scope="module")
def prepared(videos, tmp_path_factory):
  """(data_dir, summary) of `prepare_dataset` on `videos`, in this process."""
  data_dir = tmp_path_factory.mktemp("tfds")
  summary = build.prepare_dataset(videos, data_dir, num_workers=0, val_speakers=[VAL_SPEAKER],
                                  progress=False)
  return data_dir, summary


def _source(data_dir, split="train", name="diff2lip_voxceleb2"):
  return tfds.data_source(name, split=split, data_dir=os.fspath(data_dir))


# --- synthetic -----------------------------------------------------------------------------


def test_synthetic_mouth_follows_audio():
  clip = synthetic.make_clip(seed=3, seconds=2.0)
  n = clip.frames.shape[0]
  assert clip.frames.shape == (50, 224, 224, 3) and clip.frames.dtype == np.uint8
  assert clip.audio.shape == (32000,) and clip.audio.dtype == np.float32
  # Audio loudness around each frame's time follows the mouth opening drawn in it.
  hop = 16000 // 25
  rms = np.array([np.sqrt(np.mean(clip.audio[j * hop:(j + 1) * hop] ** 2)) for j in range(n)])
  assert np.corrcoef(rms, clip.mouth_opening)[0, 1] > 0.8
  # The mouth region in the fixed VoxCeleb2 crop gets darker the wider the mouth is open.
  crops = crop_lib.crop_faces(clip.frames, np.tile(crop_lib.voxceleb2_box(224, 224), (n, 1)))
  darkness = -crops[:, 80:105, 45:80].astype(np.float32).mean(axis=(1, 2, 3))
  assert np.corrcoef(darkness, clip.mouth_opening)[0, 1] > 0.9
  assert clip.mouth_opening.max() > 0.5 and clip.mouth_opening.min() < 0.05
  # Clips differ by seed.
  other = synthetic.make_clip(seed=4, seconds=2.0)
  assert not np.allclose(other.mouth_opening, clip.mouth_opening)


def test_synthetic_files(videos):
  assert len(sorted(videos.glob("dev/mp4/id*/*/00001.mp4"))) == 9
  paths = _good_videos(videos)
  assert len(paths) == 6
  v = video.read_video(paths[0])
  assert v.frames.shape == (NUM_FRAMES, 224, 224, 3) and v.fps == 25.0


# --- layout / windows ----------------------------------------------------------------------


def test_scan_layouts_and_splits(tmp_path):
  for rel in ["dev/mp4/id00001/aaa/00001.mp4", "dev/mp4/id00002/bbb/00002.mp4",
              "test/mp4/id09999/ccc/00001.mp4", "loose.mp4", "id00001/aaa/notes.txt"]:
    (tmp_path / "vox" / rel).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "vox" / rel).touch()
  kind, tasks, unusable = layout.scan(tmp_path / "vox", val_speakers=["id00002"])
  assert kind == "voxceleb2" and list(unusable) == ["loose.mp4"]
  got = {t.clip_id: t.split for t in tasks}
  assert got == {"id00001/aaa/00001": "train", "id00002/bbb/00002": "val",
                 "id09999/ccc/00001": "test"}
  # Hashed hold-out: whole speakers, deterministic, about the requested fraction.
  speakers = [f"id{i:05d}" for i in range(2000)]
  held = [layout.speaker_fraction(s) < 0.1 for s in speakers]
  assert 150 < sum(held) < 250
  for rel in ["ABOUT/train/ABOUT_00001.mp4", "ABOUT/val/ABOUT_00001.mp4",
              "ABOUT/test/ABOUT_00001.mp4", "ZERO/test/ZERO_00007.mp4"]:
    (tmp_path / "lrw" / rel).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "lrw" / rel).touch()
  kind, tasks, _ = layout.scan(tmp_path / "lrw")
  assert kind == "lrw"
  assert {t.clip_id: t.split for t in tasks} == {
      "ABOUT/train/ABOUT_00001": "train", "ABOUT/val/ABOUT_00001": "val",
      "ABOUT/test/ABOUT_00001": "test", "ZERO/test/ZERO_00007": "test"}
  assert len({t.key for t in tasks}) == 4


def test_windows():
  fps, n = 25.0, NUM_FRAMES
  t_mel = 1 + int(n / fps * 16000) // 200
  starts = windows.valid_window_starts(n, t_mel, fps)
  assert starts[0] == 1  # Wav2Lip: no window at frame 0.
  times = audio.frame_times(n, fps)
  for k in starts:
    assert audio.window_start_indices(times[k + 4:k + 5])[0] + 16 <= t_mel
    assert windows.reference_starts(k, n).size > 0
  assert starts[-1] == n - 5 - 3  # The last frames have no full 0.2 s window of audio.
  assert windows.valid_window_starts(9, 1000, fps).size == 0  # Needs 2 disjoint windows.
  assert windows.valid_window_starts(30, 20, fps).size == 0  # Audio too short.
  # Every reference window is drawn, none overlaps the target.
  rng = np.random.default_rng(0)
  drawn = {windows.sample_reference_start(7, n, rng) for _ in range(2000)}
  assert drawn == set(windows.reference_starts(7, n).tolist())
  assert all(abs(r - 7) >= 5 for r in drawn)
  assert windows.sync_window_start(3 / 25) == 9  # int(80 * 3 / 25) = int(9.6).


def test_resample_indices():
  times = np.arange(60) / 30.0  # 2 s at 30 fps -> 50 frames at 25 fps, nearest in time.
  idx = clips.resample_indices(times, 30.0, 25.0)
  assert idx.shape == (50,) and idx[0] == 0 and np.all(np.diff(idx) >= 1)
  assert np.abs(times[idx] - np.arange(50) / 25.0).max() <= 0.5 / 30 + 1e-9
  np.testing.assert_array_equal(clips.resample_indices(np.arange(10) / 25.0, 25.0, 25.0),
                                np.arange(10))


# --- prepare / tfds ------------------------------------------------------------------------


def test_prepare_builds_tfds_dataset(prepared, videos):
  data_dir, summary = prepared
  assert summary.layout == "voxceleb2" and summary.total == 9
  assert summary.processed == 6 and summary.reused == 0 and summary.remaining == 0
  # The truncated, the 0.3 s and the silent clip are skipped and reported, not fatal.
  assert set(summary.skipped) == {"dev/mp4/id00001/broken00000/00001",
                                  "dev/mp4/id00002/short000000/00001",
                                  "dev/mp4/id00002/noaudio0000/00001"}
  assert summary.skipped["dev/mp4/id00001/broken00000/00001"].startswith("unreadable video")
  assert summary.skipped["dev/mp4/id00002/short000000/00001"].startswith("too short")
  assert summary.skipped["dev/mp4/id00002/noaudio0000/00001"].startswith("no usable audio")
  assert summary.skipped_by_category() == {"unreadable video": 1, "too short": 1,
                                           "no usable audio": 1}
  assert "broken00000" in summary.format()
  assert summary.splits == {"train": 4, "val": 2}

  for split, speakers in [("train", {"id00001", "id00002"}), ("val", {VAL_SPEAKER})]:
    source = _source(data_dir, split)
    assert len(source) == summary.splits[split]
    ids = []
    for i in range(len(source)):
      ex = source[i]
      frames = np.stack(ex["frames"])
      assert frames.shape == (NUM_FRAMES, 128, 128, 3) and frames.dtype == np.uint8
      assert ex["num_frames"] == NUM_FRAMES and ex["fps"] == 25.0
      assert ex["mel"].dtype == np.float32 and ex["mel"].shape[1] == 80
      assert abs(ex["mel"].shape[0] - (1 + SECONDS * 80)) <= 8
      assert ex["boxes"].shape == (NUM_FRAMES, 4) and ex["face_found"].all()
      assert ex["speaker_id"].decode() in speakers
      ids.append(ex["clip_id"].decode())
    assert len(set(ids)) == len(ids)
    assert all(ex_id.split("/")[0] in speakers and ex_id.endswith("/00001") for ex_id in ids)

  # Content: the fixed VoxCeleb2 crop of the decoded video (JPEG q95) and its mel.
  ex = _source(data_dir)[0]
  path = videos / "dev" / "mp4" / (ex["clip_id"].decode() + ".mp4")
  v = video.read_video(path)
  box = crop_lib.voxceleb2_box(224, 224)
  assert box.tolist() == [50, 0, 174, 158]
  np.testing.assert_array_equal(ex["boxes"][0], box)
  want = crop_lib.crop_faces(v.frames, np.tile(box, (NUM_FRAMES, 1))).astype(np.float32)
  assert np.abs(np.stack(ex["frames"]) - want).mean() < 3.0
  np.testing.assert_allclose(ex["mel"], audio.melspectrogram(audio.load_audio(path)).T,
                             atol=1e-5)


def test_prepare_resumes(videos, tmp_path):
  """An interrupted run (here: stopped after 2 clips) is continued without redoing clips."""
  src = tmp_path / "in"
  for p in _good_videos(videos, "id0000[12]"):
    dst = src / p.relative_to(videos)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(p, dst)
  data_dir = tmp_path / "tfds"
  first = build.prepare_dataset(src, data_dir, num_workers=0, val_fraction=0.0,
                                max_clips=2, progress=False)
  assert (first.processed, first.reused, first.remaining, first.dataset_dir) == (2, 0, 2, None)
  work = pathlib.Path(first.work_dir)
  done = sorted(work.glob("clips/**/*.npz"))
  assert len(done) == 2
  stamps = {p: p.stat().st_mtime_ns for p in done}
  # A clip killed while being written leaves only a temporary file, which is ignored.
  (done[0].parent / ".00002.npz.12345.tmp").write_bytes(b"partial")

  second = build.prepare_dataset(src, data_dir, num_workers=0, val_fraction=0.0,
                                 progress=False)
  assert (second.processed, second.reused, second.remaining) == (2, 2, 0)
  assert {p: p.stat().st_mtime_ns for p in done} == stamps  # Not redone.
  assert second.splits == {"train": 4}
  assert len(_source(data_dir)) == 4

  third = build.prepare_dataset(src, data_dir, num_workers=0, val_fraction=0.0,
                                progress=False)
  assert (third.processed, third.reused) == (0, 4)
  with pytest.raises(ValueError, match="other options"):
    build.prepare_dataset(src, data_dir, num_workers=0, crop="detect", progress=False)


def test_prepare_lrw_layout_detects_faces(videos, tmp_path):
  for p, split in zip(_good_videos(videos), ["train", "val", "test"]):
    dst = tmp_path / "lrw" / "ABOUT" / split / "ABOUT_00001.mp4"
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(p, dst)
  summary = build.prepare_dataset(tmp_path / "lrw", tmp_path / "tfds", num_workers=0,
                                  options=clips.ProcessOptions(detect_upsample=0),
                                  progress=False)
  assert summary.layout == "lrw" and summary.dataset_name == "diff2lip_lrw"
  assert summary.splits == {"train": 1, "val": 1, "test": 1}
  ex = _source(tmp_path / "tfds", "test", "diff2lip_lrw")[0]
  assert ex["clip_id"] == b"ABOUT/test/ABOUT_00001" and ex["speaker_id"] == b"ABOUT"
  assert ex["face_found"].all() and len(ex["frames"]) == NUM_FRAMES
  x1, y1, x2, y2 = ex["boxes"][0]
  assert x1 < 109 < x2 and y1 < 114 < y2  # The synthetic mouth is inside the detected box.


def test_prepare_cli_with_workers_and_custom_name(videos, tmp_path):
  src = tmp_path / "in"
  for p in _good_videos(videos, "id00002"):
    dst = src / p.relative_to(videos)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(p, dst)
  out = subprocess.run(
      [sys.executable, "-m", "diff2lip_jax.data.prepare", f"--input_dir={src}",
       f"--data_dir={tmp_path / 'tfds'}", "--dataset_name=my_clips", "--num_workers=2",
       "--val_fraction=0"],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "2 clips (voxceleb2 layout): 2 processed now" in out.stdout
  assert "dataset my_clips (train: 2)" in out.stdout
  source = _source(tmp_path / "tfds", "train", "my_clips")
  assert len(source) == 2 and len(source[1]["frames"]) == NUM_FRAMES


# --- grain pipeline ------------------------------------------------------------------------


def _iterator(data_dir, **kwargs):
  args = dict(dataset_name="diff2lip_voxceleb2", split="train", per_host_batch=2, seed=0,
              process_index=0, process_count=1)
  args.update(kwargs)
  return pipeline.make_train_iterator(os.fspath(data_dir), **args)


def _take(it, n):
  return [next(it) for _ in range(n)]


def _same(a, b) -> bool:
  return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_pipeline_shapes_and_windows(prepared):
  data_dir, _ = prepared
  batches = _take(_iterator(data_dir, random_flip=True), 6)
  b = batches[0]
  assert b["image"].shape == (2, 5, 128, 128, 3) and b["image"].dtype == np.uint8
  assert b["ref_img"].shape == (2, 5, 128, 128, 3) and b["ref_img"].dtype == np.uint8
  assert b["indiv_mels"].shape == (2, 5, 80, 16) and b["indiv_mels"].dtype == np.float32
  assert b["mel"].shape == (2, 80, 16) and b["mel"].dtype == np.float32
  assert b["clip_index"].dtype == np.int64 and b["start_frame"].shape == (2,)

  source = _source(data_dir)
  flips = set()
  for b in batches:
    for i in range(2):
      ex = source[int(b["clip_index"][i])]
      frames = np.stack(ex["frames"])
      k, r = int(b["start_frame"][i]), int(b["ref_start"][i])
      assert 1 <= k <= NUM_FRAMES - 5 and 0 <= r <= NUM_FRAMES - 5
      assert abs(r - k) >= 5  # Reference window entirely outside the target window.
      flip = bool(b["flipped"][i])
      flips.add(flip)
      want, want_ref = frames[k:k + 5], frames[r:r + 5]
      if flip:
        want, want_ref = want[:, :, ::-1], want_ref[:, :, ::-1]
      np.testing.assert_array_equal(b["image"][i], want)
      np.testing.assert_array_equal(b["ref_img"][i], want_ref)
      mel = ex["mel"].T
      all_windows = audio.mel_windows(mel, audio.frame_times(NUM_FRAMES, ex["fps"]))
      for j in range(5):
        np.testing.assert_array_equal(b["indiv_mels"][i, j], all_windows[k + j])
      s = int(80 * k / 25)
      np.testing.assert_array_equal(b["mel"][i], mel[:, s:s + 16])
  assert flips == {False, True}


def test_sample_example_drops_short_clips():
  rng = np.random.default_rng(0)
  frames = [np.full((128, 128, 3), i, np.uint8) for i in range(12)]
  record = {"frames": frames, "mel": np.zeros((20, 80), np.float32), "fps": 25.0}
  assert pipeline.sample_example(record, 0, rng) is None  # Audio ends after 0.25 s.
  record["mel"] = np.random.default_rng(1).normal(size=(200, 80)).astype(np.float32)
  ex = pipeline.sample_example(record, 7, rng)
  k, r = int(ex["start_frame"]), int(ex["ref_start"])
  assert ex["clip_index"] == 7 and abs(k - r) >= 5
  assert ex["image"][:, 0, 0, 0].tolist() == list(range(k, k + 5))
  assert ex["ref_img"][:, 0, 0, 0].tolist() == list(range(r, r + 5))
  assert pipeline.sample_example({**record, "frames": frames[:9]}, 0, rng) is None


def test_pipeline_deterministic_per_seed(prepared):
  data_dir, _ = prepared
  a, b = _take(_iterator(data_dir, seed=0), 4), _take(_iterator(data_dir, seed=0), 4)
  assert all(_same(x, y) for x, y in zip(a, b))
  c = _take(_iterator(data_dir, seed=1), 4)
  assert not all(_same(x, y) for x, y in zip(a, c))
  # An epoch visits every train clip once; the next epoch draws new windows.
  epochs = _take(_iterator(data_dir, seed=0, num_epochs=2), 4)
  first = np.concatenate([x["clip_index"] for x in epochs[:2]])
  second = np.concatenate([x["clip_index"] for x in epochs[2:]])
  assert sorted(first) == sorted(second) == [0, 1, 2, 3]
  it = _iterator(data_dir, seed=0, num_epochs=1, per_host_batch=3)
  next(it)
  with pytest.raises(StopIteration):  # 4 clips, batch 3, remainder dropped: one batch.
    next(it)


def test_pipeline_hosts_draw_one_global_batch(prepared):
  """Hosts take disjoint parts of one global stream: at one step their examples differ (clip,
  window, reference, flip), and the global batch of 2 hosts is exactly that of 1 host; an
  epoch still visits every clip once; `restart_at_batch` lands where the stream is."""
  data_dir, _ = prepared
  keys = ("clip_index", "start_frame", "ref_start", "flipped")
  draw = lambda b: [tuple(int(b[k][i]) for k in keys) for i in range(len(b["clip_index"]))]
  one = _take(_iterator(data_dir, per_host_batch=4, random_flip=True), 3)
  hosts = [_take(_iterator(data_dir, process_index=h, process_count=2, random_flip=True), 3)
           for h in range(2)]
  for step in range(3):
    h0, h1 = draw(hosts[0][step]), draw(hosts[1][step])
    assert h0 + h1 == draw(one[step])
    assert set(h0).isdisjoint(h1)
    assert {x[0] for x in h0}.isdisjoint({x[0] for x in h1})  # other clips (within an epoch)
  seen = [{int(x["clip_index"][0]) for x in _iterator(
      data_dir, process_index=h, process_count=2, per_host_batch=1, num_epochs=1)} for h in (0, 1)]
  assert len(seen[0]) == len(seen[1]) == 2
  assert not seen[0] & seen[1] and seen[0] | seen[1] == {0, 1, 2, 3}
  moved = _iterator(data_dir, process_index=1, process_count=2, random_flip=True)
  pipeline.restart_at_batch(moved, 2, per_host_batch=2)
  assert _same(next(moved), hosts[1][2])


def test_pipeline_state_resumes(prepared):
  data_dir, _ = prepared
  it = _iterator(data_dir)
  _take(it, 3)
  state = it.get_state()
  want = _take(it, 2)
  fresh = _iterator(data_dir)
  fresh.set_state(state)
  assert all(_same(x, y) for x, y in zip(want, _take(fresh, 2)))


def test_pipeline_orbax_checkpoint(prepared, tmp_path):
  import orbax.checkpoint as ocp
  data_dir, _ = prepared
  it = _iterator(data_dir)
  _take(it, 2)
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    mngr.save(2, args=ocp.args.Composite(
        state=ocp.args.StandardSave({"step": np.array(2)}),
        data=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
  want = next(it)
  fresh = _iterator(data_dir)
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    restored = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(
        state=ocp.args.StandardRestore({"step": np.array(0)}),
        data=grain.checkpoint.CheckpointRestore(fresh)))
  assert int(restored.state["step"]) == 2
  assert _same(want, next(restored.data))


def test_pipeline_worker_processes_match(prepared):
  data_dir, _ = prepared
  want = _take(_iterator(data_dir), 3)
  it = _iterator(data_dir, worker_count=1)
  try:
    got = _take(it, 2)
    state = it.get_state()
    got.append(next(it))
  finally:
    it.close()
  assert all(_same(x, y) for x, y in zip(want, got))
  fresh = _iterator(data_dir, worker_count=1)
  try:
    fresh.set_state(state)
    assert _same(want[2], next(fresh))
  finally:
    fresh.close()
