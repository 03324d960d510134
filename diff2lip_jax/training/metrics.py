"""Training metrics to TensorBoard (tensorboardX), stdout and `workdir/metrics.jsonl` (full
precision, one JSON object per write), and sample grids as images."""

from __future__ import annotations

import json
import pathlib
import time
from typing import Mapping, Optional

import jax
import numpy as np
from PIL import Image


class MetricWriter:
  """Writes scalars and images from process 0; other processes write nothing."""

  def __init__(self, workdir: str | pathlib.Path):
    self.workdir = pathlib.Path(workdir)
    self.enabled = jax.process_index() == 0
    self._tb = self._jsonl = None
    if self.enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      self._tb = SummaryWriter(str(self.workdir / "tensorboard"))
      self._jsonl = open(self.workdir / "metrics.jsonl", "a", encoding="utf-8")

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    for k, v in values.items():
      self._tb.add_scalar(k, float(v), step)
    self._jsonl.write(json.dumps({"step": step, **{k: float(v) for k, v in values.items()}}) + "\n")
    self._jsonl.flush()
    print(f"step {step}: " + ", ".join(f"{k}={float(v):.4g}" for k, v in sorted(values.items())),
          flush=True)

  def image(self, step: int, name: str, grid: np.ndarray) -> Optional[pathlib.Path]:
    """Writes `grid` [H, W, 3] uint8 to TensorBoard and `workdir/samples/<name>_<step>.png`."""
    if not self.enabled:
      return None
    self._tb.add_image(name, grid, step, dataformats="HWC")
    path = self.workdir / "samples" / f"{name}_{step:07d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    return path

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._jsonl.close()


def image_grid(rows: list[np.ndarray]) -> np.ndarray:
  """Stacks rows of frames into one image: each row [N, S, S, 3] in [-1, 1] -> [R*S, N*S, 3] uint8."""
  lines = [np.concatenate(list(np.asarray(r)), axis=1) for r in rows]
  grid = np.concatenate(lines, axis=0)
  return np.clip(np.round((grid + 1.0) * 127.5), 0, 255).astype(np.uint8)


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
