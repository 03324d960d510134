"""Fast in-process checks of the trainers' pieces: losses per timestep quartile, the batch-size
error, single-process preemption, the metric writer on a remote (URI) workdir, and that no
trainer module opens a path with pathlib or builtin `open` (gs:// workdirs)."""

import os
import pathlib
import re
import signal
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diff2lip_jax import sharding
from diff2lip_jax.training import checkpointing, data_setup, metrics, step

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_quartile_sums_and_means():
  t = jnp.array([0, 249, 250, 999, 998, 10])
  loss = jnp.array([1.0, 3.0, 5.0, 7.0, 9.0, 2.0])
  q = step.quartile_sums({"loss_simple": loss}, t, 1000)
  np.testing.assert_allclose(q["loss_simple/q_sum"], [6.0, 5.0, 0.0, 16.0])
  np.testing.assert_allclose(q["t_quartile_count"], [3, 1, 0, 2])
  means = step.quartile_means(q)
  assert means == {"loss_simple/q0": 2.0, "loss_simple/q1": 5.0, "loss_simple/q3": 8.0}
  # Sums over steps (and micro-batches scaled by the same factor) give the pooled mean.
  two = jax.tree.map(lambda a, b: a + 0.5 * b, q, step.quartile_sums(
      {"loss_simple": jnp.array([4.0])}, jnp.array([600]), 1000))
  assert step.quartile_means(two)["loss_simple/q2"] == 4.0
  scalars, quart = step.split_metrics({"loss": 1.0, **q})
  assert list(scalars) == ["loss"] and set(quart) == set(q)


def test_batch_size_error_is_one_line():
  mesh = sharding.make_mesh()
  assert data_setup.check_batch_size("batch_size", 4, mesh) == 4
  with pytest.raises(ValueError, match=r"batch_size=3 must be a positive multiple .* accum_steps=2"):
    data_setup.check_batch_size("batch_size", 3, mesh, accum_steps=2)


def test_single_process_sigterm_is_seen_once_per_step():
  previous = signal.getsignal(signal.SIGTERM)
  try:
    preemption = checkpointing.Preemption()
    assert not preemption.reached(1)
    os.kill(os.getpid(), signal.SIGTERM)
    assert preemption.reached(2)
  finally:
    signal.signal(signal.SIGTERM, previous)


def test_metric_writer_stages_a_remote_workdir(tmp_path, monkeypatch):
  """A `gs://` workdir (here an fsspec file system standing in for GCS): scalars, TensorBoard
  events and images reach it through epath, and a second writer appends."""
  import fsspec
  from fsspec.implementations.local import LocalFileSystem

  bucket = tmp_path / "bucket"

  class FakeGCS(LocalFileSystem):
    protocol = "gs"

    @classmethod
    def _strip_protocol(cls, path):
      path = fsspec.utils.stringify_path(path)
      if path.startswith(os.fspath(bucket)):
        return path
      return os.fspath(bucket / path.removeprefix("gs://").lstrip("/"))

  from etils.epath import gpath
  fs_backend = gpath.backend_lib.fsspec_backend
  for name in ("gs", "gcs"):
    fsspec.register_implementation(name, FakeGCS, clobber=True)
  monkeypatch.setitem(gpath._PREFIX_TO_BACKEND, "gs", fs_backend)  # pylint: disable=protected-access
  fs_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access
  try:
    for k in range(2):
      writer = metrics.MetricWriter("gs://b/run", sync_every_s=0.0)
      writer.scalars(k + 1, {"loss": 0.5 + k})
      writer.image(k + 1, "samples", np.zeros((4, 4, 3), np.uint8))
      writer.close()
  finally:
    for name in ("gs", "gcs"):
      sys.modules["fsspec.registry"]._registry.pop(name, None)  # pylint: disable=protected-access
    fs_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access
  run = bucket / "b" / "run"
  assert [l.count('"loss"') for l in (run / "metrics.jsonl").read_text().splitlines()] == [1, 1]
  assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 2
  assert sorted(p.name for p in (run / "samples").iterdir()) == [
      "samples_0000001.png", "samples_0000002.png"]
  assert not pathlib.Path("gs:").exists()


def test_trainers_open_paths_only_through_epath():
  """No `pathlib.Path(...)` or builtin `open(` in the trainers (they would turn gs:// local)."""
  bad = []
  for path in sorted((REPO / "diff2lip_jax" / "training").glob("*.py")):
    for n, line in enumerate(path.read_text().splitlines(), 1):
      code = line.split("#")[0].replace("`pathlib.Path(", "")
      if re.search(r"\bpathlib\.Path\(|(?<![.\w])open\(", code):
        bad.append(f"{path.name}:{n}: {line.strip()}")
  assert not bad, bad


def test_restore_with_another_host_count_moves_the_iterator(tmp_path, caplog):
  """A checkpoint whose iterator files are another host count's (here: renamed to 2 hosts):
  the state restores, and the iterator continues at the checkpoint's global batch."""
  import grain
  mesh = sharding.make_mesh()
  state = {"w": jnp.arange(4.0)}
  shard = {"w": sharding.replicated(mesh)}
  make_iter = lambda: iter(grain.MapDataset.range(100).to_iter_dataset().batch(2))
  it = make_iter()
  for _ in range(5):
    next(it)
  manager = checkpointing.make_manager(tmp_path, 5, async_save=False)
  checkpointing.save(manager, 5, state, it, {checkpointing.BEST_METRIC: 1.0}, force=True)
  manager.wait_until_finished()
  data = tmp_path / "checkpoints" / "5" / checkpointing.DATA_ITEM
  (data / "process_0-of-1.json").rename(data / "process_0-of-2.json")
  fresh = make_iter()
  restored, at = checkpointing.restore(manager, jax.eval_shape(lambda: state), shard, fresh,
                                       per_host_batch=2)
  manager.close()
  assert at == 5 and np.array_equal(restored["w"], state["w"])
  assert next(fresh).tolist() == [10, 11]
  assert "written by another host count" in caplog.text
