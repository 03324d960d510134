"""Training the Wav2Lip lip-sync expert: the pair sampler's labels and alignment, the train step
learns, the debug launch runs and resumes, and the generator's sync loss loads the result.

The launch runs in subprocesses (a resumed run must be a fresh process) that share a persistent
compilation cache, so the resumed run does not compile again; XLA's CPU back-end optimisations
are turned down for them (compile time dominates these few-step runs on a 2-core CPU)."""

import pathlib
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from diff2lip_jax import sharding
from diff2lip_jax.data import pipeline, sync_pairs, windows
from diff2lip_jax.media import audio
from diff2lip_jax.models import syncnet
from diff2lip_jax.training import expert, syncnet_step
from diff2lip_jax.training.metrics import read_metrics

REPO = pathlib.Path(__file__).resolve().parents[1]
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  """A synthetic tfds dataset: speaker 1 (2 clips) = train, speaker 2 (1 clip) = val."""
  from diff2lip_jax import data  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.mktemp("sync_data")
  data.make_synthetic_dataset(root / "videos", num_ids=2, clips_per_id=2, seconds=1.2, seed=3)
  data.prepare_dataset(root / "videos", root, val_speakers=["id00002"], val_fraction=0.0,
                       num_workers=0, progress=False)
  return root


def _numbered_record(n: int, fps: float) -> dict:
  """Frame i is filled with i, mel step t holds t in every bin: offsets can be read back."""
  t = int(n / fps * audio.MEL_STEPS_PER_SECOND)
  return {"frames": [np.full((4, 4, 3), i, np.uint8) for i in range(n)],
          "mel": np.repeat(np.arange(t, dtype=np.float32)[:, None], 80, axis=1), "fps": fps}


@pytest.mark.parametrize("fps", [25.0, 30.0])
def test_pairs_are_labelled_and_aligned(fps):
  record = _numbered_record(40, fps)
  rng = np.random.default_rng(0)
  labels = []
  for _ in range(300):
    ex = sync_pairs.sample_pair(record, 7, rng)
    k, f, y = int(ex["start_frame"]), int(ex["face_start"]), float(ex["label"])
    assert ex["faces"].shape == (5, 4, 4, 3) and ex["faces"].dtype == np.uint8
    assert ex["mel"].shape == (80, 16) and ex["mel"].dtype == np.float32
    assert int(ex["clip_index"]) == 7 and k in windows.valid_window_starts(40, len(record["mel"]),
                                                                           fps)
    # The faces are frames f .. f+4; the audio always starts at frame k's time (no lead).
    np.testing.assert_array_equal(ex["faces"][:, 0, 0, 0], f + np.arange(5))
    s = ex["mel"][0, 0]
    np.testing.assert_array_equal(ex["mel"][:, :], s + np.arange(16)[None].repeat(80, 0))
    assert k / fps - 1 / 80 < s / 80 <= k / fps + 1e-9
    if y == 1.0:
      assert f == k
    else:
      assert y == 0.0 and abs(f - k) >= 5 and 0 <= f <= 35
    labels.append(y)
  assert 110 < sum(labels) < 190  # about half in sync


def test_sync_iterator_reads_pairs_from_tfds(dataset):
  it = sync_pairs.make_sync_iterator(dataset, "diff2lip_voxceleb2", "train", per_host_batch=6,
                                     seed=1, read_threads=1)
  b = next(it)
  assert b["faces"].shape == (6, 5, 128, 128, 3) and b["faces"].dtype == np.uint8
  assert b["mel"].shape == (6, 80, 16) and b["label"].shape == (6,)
  assert set(np.unique(b["label"])) <= {0.0, 1.0}
  source = pipeline.open_source(dataset, "diff2lip_voxceleb2", "train")
  for i in range(2):
    rec = source[int(b["clip_index"][i])]
    np.testing.assert_array_equal(
        b["faces"][i], pipeline.decode_frames(rec["frames"], int(b["face_start"][i]), 5))
    s = int(windows.sync_window_start(int(b["start_frame"][i]) / float(rec["fps"])))
    np.testing.assert_array_equal(b["mel"][i], np.asarray(rec["mel"]).T[:, s:s + 16])
  assert np.all((b["label"] == 1) == (b["face_start"] == b["start_frame"]))


def test_train_step_lowers_loss_and_updates_batch_stats():
  model = syncnet.Wav2LipSyncNet(precision=jax.lax.Precision.DEFAULT)
  tx = optax.adam(1e-3)
  mesh = sharding.make_mesh()
  abstract = syncnet_step.abstract_state(model, tx)
  train_step, _, shardings = syncnet_step.jit_steps(
      syncnet_step.make_train_step(model, tx), syncnet_step.make_eval_step(model), abstract, mesh)
  state = syncnet_step.init_state(model, tx, 0, shardings)
  rng = np.random.default_rng(0)
  batch = sharding.global_batch({
      "faces": rng.integers(0, 256, (4, 5, 16, 16, 3), dtype=np.uint8),
      "mel": rng.uniform(-4, 4, (4, 80, 16)).astype(np.float32),
      "label": np.array([1, 0, 1, 0], np.float32)}, mesh)
  step = train_step.lower(state, batch).compile(_FAST_COMPILE)
  stats0 = np.asarray(state.batch_stats["face_encoder_0"]["conv_block_1"]["mean"])
  losses = []
  for _ in range(6):
    state, m = step(state, batch)
    losses.append(float(m["loss"]) / float(m["count"]))
  assert int(state.step) == 6
  assert losses[-1] < 0.5 * losses[0], losses
  stats = np.asarray(state.batch_stats["face_encoder_0"]["conv_block_1"]["mean"])
  assert not np.allclose(stats, stats0)  # train-mode BatchNorm updated the running mean


@pytest.fixture(scope="module")
def env(trainer_env):
  return trainer_env


def _launch(workdir, data_dir, env, steps):
  cmd = [sys.executable, "-m", "launch.train_syncnet", "--config",
         str(REPO / "configs" / "syncnet_debug.py"), "--workdir", str(workdir),
         f"--config.data.data_dir={data_dir}", f"--config.num_train_steps={steps}",
         "--config.batch_size=4", "--config.eval_batch_size=4", "--config.eval_batches=1",
         "--config.log_every=1", "--config.eval_every=2", "--config.checkpoint_every=2"]
  t = time.perf_counter()
  r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, check=False)
  print(f"launch of {steps} steps: {time.perf_counter() - t:.1f} s")
  assert r.returncode == 0, r.stderr[-3000:]
  return r


def test_debug_launch_resumes_and_main_training_loads_it(dataset, env, tmp_path):
  work = tmp_path / "work"
  _launch(work, dataset, env, 2)
  r = _launch(work, dataset, env, 3)
  assert "resumed from" in r.stderr and "at step 2" in r.stderr
  rows = read_metrics(work)
  train = {r["step"]: r for r in rows if "accuracy" in r}
  val = {r["step"]: r for r in rows if "val_accuracy" in r}
  assert sorted(train) == [1, 2, 3] and sorted(val) == [2, 3]
  for row in train.values():  # (p_in_sync / p_off_sync are NaN for a batch without such pairs)
    assert np.isfinite(row["loss"]) and np.isfinite(row["grad_norm"])
  assert all(np.isfinite(row["val_loss"]) for row in val.values())
  assert 0.0 <= train[3]["accuracy"] <= 1.0 and 0.0 <= val[3]["val_accuracy"] <= 1.0
  assert sorted(int(p.name) for p in (work / "checkpoints").iterdir()) == [2, 3]

  # The workdir gives the checkpoint with the lowest val loss; a step folder gives that step.
  best = min(val, key=lambda s: val[s]["val_loss"])
  _, from_work = expert.load_expert(work)
  _, from_step = expert.load_expert(work / "checkpoints" / str(best))
  _, other = expert.load_expert(work / "checkpoints" / str(5 - best))
  jax.tree.map(np.testing.assert_array_equal, from_work, from_step)
  assert not np.array_equal(from_work["params"]["face_encoder_0"]["conv_block_0"]["kernel"],
                            other["params"]["face_encoder_0"]["conv_block_0"]["kernel"])

  from diff2lip_jax.training import train  # pylint: disable=import-outside-toplevel
  config = ml_collections.ConfigDict({"loss": dict(simple=1.0, sync=0.1, lpips=0.0, gan=0.0,
                                                   syncnet_weights=str(work),
                                                   lpips_weights="")})
  weights, _, sync_embed = train._loss_networks(config)  # pylint: disable=protected-access
  assert weights.sync == 0.1 and sync_embed is not None
  a, v = jax.eval_shape(sync_embed, jnp.zeros((2, 48, 96, 15)), jnp.zeros((2, 80, 16)))
  assert a.shape == v.shape == (2, 512)


def test_load_expert_file_vs_directory(tmp_path):
  model = syncnet.Wav2LipSyncNet()
  abstract = jax.eval_shape(lambda: syncnet.init_wav2lip_syncnet(model, jax.random.key(0)))
  variables = syncnet.random_variables(abstract, seed=1)
  # A file: Wav2Lip's state_dict (here an .npz written from `variables`, PyTorch layouts).
  sd = {}
  for collection, tree in variables.items():
    for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
      keys = tuple(p.key for p in path)
      sd[syncnet.torch_name(collection, keys)] = x.transpose(3, 2, 0, 1) if x.ndim == 4 else x
  np.savez(tmp_path / "lipsync_expert.npz", **sd)
  _, loaded = expert.load_expert(tmp_path / "lipsync_expert.npz")
  jax.tree.map(np.testing.assert_array_equal, loaded, variables)
  # A directory without checkpoints is not mistaken for weights.
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="no SyncNet checkpoint"):
    expert.load_expert(tmp_path / "empty")
