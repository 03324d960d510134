"""Training metrics to TensorBoard (tensorboardX), stdout and `workdir/metrics.jsonl` (full
precision, one JSON object per write), and sample grids as images.

The workdir may be remote (`gs://...`; see `training.paths` for what that needs installed):
then TensorBoard events and `metrics.jsonl` are written to a local staging folder and copied
to the workdir through epath at most every `sync_every_s` seconds and at `close()` (object
stores have no append; tensorboardX alone would need google-cloud-storage). A resumed run
appends to the workdir's `metrics.jsonl`.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import time
import uuid
from typing import Mapping, Optional

import jax
import numpy as np
from etils import epath
from PIL import Image

from diff2lip_jax.media import pixels
from diff2lip_jax.training import paths

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
SAMPLES_DIR = "samples"


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
  """The rows of `workdir/metrics.jsonl` in the order written: {"step": int, name: float, ...}
  (one row per `MetricWriter.scalars` call; [] when the file does not exist yet).

  Raises:
    json.JSONDecodeError: a line that is not JSON (e.g. read while a run is appending it).
  """
  path = epath.Path(workdir) / METRICS_FILE
  return [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []


class MetricWriter:
  """Writes scalars and images from process 0; other processes write nothing."""

  def __init__(self, workdir: str | os.PathLike, sync_every_s: float = 60.0):
    self.workdir = paths.absolute(workdir)
    self.enabled = jax.process_index() == 0
    self.remote = not paths.is_local(self.workdir)
    self.sync_every_s = sync_every_s
    self._tb = self._jsonl = None
    self._synced = time.monotonic()
    if not self.enabled:
      return
    self._stage = (epath.Path(tempfile.mkdtemp(prefix="diff2lip_metrics_")) if self.remote
                   else self.workdir)
    self._stage.mkdir(parents=True, exist_ok=True)
    if self.remote and (self.workdir / METRICS_FILE).exists():
      (self._stage / METRICS_FILE).write_text((self.workdir / METRICS_FILE).read_text())
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    # A unique event file per writer: a restaged (resumed) run must not overwrite the last one.
    self._tb = SummaryWriter(os.fspath(self._stage / TENSORBOARD_DIR),
                             filename_suffix=f".{uuid.uuid4().hex[:8]}")
    self._jsonl = (self._stage / METRICS_FILE).open("a")

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    """Logs `values` (name -> float) at `step`."""
    if not self.enabled:
      return
    for k, v in values.items():
      self._tb.add_scalar(k, float(v), step)
    self._jsonl.write(json.dumps({"step": step, **{k: float(v) for k, v in values.items()}}) + "\n")
    self._jsonl.flush()
    print(f"step {step}: " + ", ".join(f"{k}={float(v):.4g}" for k, v in sorted(values.items())),
          flush=True)
    self._maybe_sync()

  def image(self, step: int, name: str, grid: np.ndarray) -> Optional[epath.Path]:
    """Writes `grid` [H, W, 3] uint8 to TensorBoard and `workdir/samples/<name>_<step>.png`."""
    if not self.enabled:
      return None
    self._tb.add_image(name, grid, step, dataformats="HWC")
    path = self.workdir / SAMPLES_DIR / f"{name}_{step:07d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(grid).save(buf, format="PNG")
    path.write_bytes(buf.getvalue())
    self._maybe_sync()
    return path

  def _maybe_sync(self, force: bool = False) -> None:
    if not self.remote or not (force or time.monotonic() - self._synced >= self.sync_every_s):
      return
    self._tb.flush()
    for root, _, files in os.walk(self._stage):  # the stage is local
      for name in files:
        rel = os.path.relpath(os.path.join(root, name), self._stage)
        dest = self.workdir / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        (self._stage / rel).copy(dest, overwrite=True)
    self._synced = time.monotonic()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._jsonl.close()
      self._maybe_sync(force=True)
      self._tb = None


def image_grid(rows: list[np.ndarray]) -> np.ndarray:
  """Stacks rows of frames into one image: each row [N, S, S, 3] in [-1, 1] -> [R*S, N*S, 3] uint8."""
  lines = [np.concatenate(list(np.asarray(r)), axis=1) for r in rows]
  grid = np.concatenate(lines, axis=0)
  return pixels.to_uint8(grid)


class Throughput:
  """Steps/s and frames/s between calls of `rates(step)`."""

  def __init__(self, frames_per_step: int):
    self.frames_per_step = frames_per_step
    self._t, self._step = time.perf_counter(), None

  def rates(self, step: int) -> dict[str, float]:
    now = time.perf_counter()
    out = {}
    if self._step is not None and step > self._step:
      dt = (now - self._t) / (step - self._step)
      out = {"step_time_s": dt, "frames_per_s": self.frames_per_step / dt}
    self._t, self._step = now, step
    return out
