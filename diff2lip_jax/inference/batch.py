"""Lip-syncing many (audio, video) pairs from an upstream-style filelist, on every device.

The filelist format and output names are upstream's (`filelists`; `generate.py
--generate_from_filelist 1`): a name that exists as given is used as is, otherwise `.mp4` is
appended; the output of a pair is `<Pair.name>.mp4` in the output folder.

Jobs are spread over every local JAX device of every host: item i goes to worker
i mod (hosts x local devices), each worker (one thread per local device) runs its items one
after the other on its device. A failed item is logged and listed, the rest go on. Outputs are
written atomically, so an existing output is a finished one: a rerun skips it (unless
`overwrite`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import pathlib
import threading
import time
import traceback
from typing import Any, Callable, Sequence

import jax
from absl import logging

from diff2lip_jax.inference.filelists import Pair, read_filelist, resolve_media

__all__ = ["BatchReport", "assign_items", "run_filelist"]


@dataclasses.dataclass
class BatchReport:
  """What `run_filelist` did (this host's share)."""

  done: list[pathlib.Path] = dataclasses.field(default_factory=list)
  skipped: list[pathlib.Path] = dataclasses.field(default_factory=list)
  failed: list[tuple[Pair, str]] = dataclasses.field(default_factory=list)
  total: int = 0  # items in the whole filelist


def assign_items(num_items: int, process_index: int, process_count: int,
                 num_local_devices: int) -> list[list[int]]:
  """Item indices for each local device of this host.

  Worker w = process_index * num_local_devices + d takes items i with
  i mod (process_count * num_local_devices) == w.

  Returns:
    `num_local_devices` lists of item indices (in filelist order).
  """
  workers = process_count * num_local_devices
  first = process_index * num_local_devices
  return [list(range(first + d, num_items, workers)) for d in range(num_local_devices)]


def run_filelist(filelist: str | os.PathLike, data_root: str | os.PathLike,
                 sample_path: str | os.PathLike, run_one: Callable[..., Any], *,
                 overwrite: bool = False, devices: Sequence[Any] | None = None,
                 progress: bool = True) -> BatchReport:
  """Runs `run_one(video_path, audio_path, out_path, device)` for this host's items.

  Args:
    filelist: the `<audio> <video>` file.
    data_root: folder the filelist's paths are relative to.
    sample_path: output folder (created).
    run_one: lip-syncs one pair onto one device (e.g. a partial of `lipsync_to_file`).
    overwrite: redo pairs whose output exists.
    devices: local devices to use (default: all of `jax.local_devices()`).
    progress: log each finished item.

  Returns:
    A `BatchReport` of this host's items.
  """
  items = read_filelist(filelist)
  out_dir = pathlib.Path(sample_path)
  out_dir.mkdir(parents=True, exist_ok=True)
  devices = list(devices or jax.local_devices())
  shares = assign_items(len(items), jax.process_index(), jax.process_count(), len(devices))
  report = BatchReport(total=len(items))
  lock = threading.Lock()
  mine = sum(len(s) for s in shares)
  counter = [0]

  def work(device: Any, indices: list[int]) -> None:
    for i in indices:
      item = items[i]
      out = out_dir / f"{item.name}.mp4"
      if out.exists() and not overwrite:
        with lock:
          report.skipped.append(out)
          counter[0] += 1
        continue
      start = time.time()
      try:
        audio = resolve_media(data_root, item.audio)
        video = resolve_media(data_root, item.video)
        run_one(video, audio, out, device)
      except Exception as e:  # pylint: disable=broad-except
        message = f"{type(e).__name__}: {e}" if not isinstance(e, ValueError) else str(e)
        logging.error("filelist line %d (%s %s) failed: %s", item.line, item.audio, item.video,
                      message)
        logging.debug("%s", traceback.format_exc())
        with lock:
          report.failed.append((item, message))
          counter[0] += 1
        continue
      with lock:
        report.done.append(out)
        counter[0] += 1
        if progress:
          print(f"[{counter[0]}/{mine}] wrote {out} ({time.time() - start:.1f} s)", flush=True)

  if len(devices) == 1:
    work(devices[0], shares[0])
  else:
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(devices)) as pool:
      futures = [pool.submit(work, d, s) for d, s in zip(devices, shares) if s]
      for f in futures:
        f.result()
  return report
