"""`prepare_dataset`: a folder of talking-face videos -> a tensorflow-datasets ArrayRecord dataset.

Two stages (the CLI is `python -m diff2lip_jax.data.prepare`):

1. **Clips.** Every video found by `layout.scan` is processed by `clips.process_clip` in a pool
   of processes (`multiprocessing`, spawn) into `<work_dir>/clips/<key>.npz`; a clip that
   cannot be used gets `<key>.skipped.txt` with the reason instead. Both are written
   atomically, so the stage is resumable: a killed or interrupted run is started again with
   the same arguments and only the clips without either file are processed
   (`retry_skipped=True` also retries the skipped ones). `<work_dir>/config.json` records the
   processing options; resuming with different ones is refused (pass `overwrite=True` to
   start over).
2. **Dataset.** `builder.Diff2LipClips` (e.g. `diff2lip_voxceleb2`) reads the work dir as its
   manual dir and writes `<data_dir>/<dataset_name>/<version>/` as ArrayRecord; it is rebuilt
   from the clips on every run (cheap next to stage 1).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import multiprocessing
import os
import pathlib
import shutil
from typing import Any, Literal, Sequence

from tqdm.auto import tqdm

from diff2lip_jax.data import clips
from diff2lip_jax.data import layout as layout_lib

CONFIG = "config.json"
SUMMARY = "summary.json"
DEFAULT_NAMES = {"voxceleb2": "diff2lip_voxceleb2", "lrw": "diff2lip_lrw"}
_CONFIG_VERSION = 1


@dataclasses.dataclass
class PrepareSummary:
  """What `prepare_dataset` did.

  Attributes:
    layout: "voxceleb2" or "lrw".
    dataset_name: tfds name of the dataset.
    work_dir: folder of the per-clip files.
    dataset_dir: the built dataset (`<data_dir>/<name>/<version>`), None if not built.
    total: videos found that fit the layout.
    processed: clips processed by this run.
    reused: clips finished by an earlier run (not redone).
    skipped: {clip key: "category: reason"} for unusable clips (this run and earlier ones).
    unusable: {relative path: reason} for video files that do not fit the layout.
    remaining: clips not attempted yet (`max_clips` stopped early).
    splits: {split: examples} in the built dataset (empty if not built).
  """

  layout: str
  dataset_name: str
  work_dir: str
  dataset_dir: str | None = None
  total: int = 0
  processed: int = 0
  reused: int = 0
  skipped: dict[str, str] = dataclasses.field(default_factory=dict)
  unusable: dict[str, str] = dataclasses.field(default_factory=dict)
  remaining: int = 0
  splits: dict[str, int] = dataclasses.field(default_factory=dict)

  def skipped_by_category(self) -> dict[str, int]:
    """{category: count} of the skipped clips, most frequent first."""
    counts = collections.Counter(v.split(":", 1)[0] for v in self.skipped.values())
    return dict(counts.most_common())

  def format(self, limit: int = 20) -> str:
    """Human-readable multi-line report."""
    lines = [f"{self.total} clips ({self.layout} layout): {self.processed} processed now, "
             f"{self.reused} done before, {len(self.skipped)} skipped, "
             f"{self.remaining} not attempted yet"]
    if self.skipped:
      cats = ", ".join(f"{c}: {n}" for c, n in self.skipped_by_category().items())
      lines.append(f"skipped ({cats}):")
      for key, reason in sorted(self.skipped.items())[:limit]:
        lines.append(f"  {key}: {reason}")
      if len(self.skipped) > limit:
        lines.append(f"  ... {len(self.skipped) - limit} more in {self.work_dir}/{SUMMARY}")
    if self.unusable:
      lines.append(f"{len(self.unusable)} video files do not fit the layout, e.g. "
                   f"{next(iter(self.unusable.items()))}")
    if self.dataset_dir:
      counts = ", ".join(f"{s}: {n}" for s, n in self.splits.items())
      lines.append(f"dataset {self.dataset_name} ({counts}) in {self.dataset_dir}")
    return "\n".join(lines)


def _run_task(item: tuple[layout_lib.ClipTask, clips.ProcessOptions, str]
              ) -> tuple[str, str, str]:
  """Worker: processes one clip; returns (key, status, "category: reason").

  status is "done", "skipped" (recorded on disk, not retried) or "failed" (an unexpected
  error, not recorded, so the next run retries it).
  """
  task, options, work_dir = item
  try:
    arrays = clips.process_clip(task, options)
  except clips.ClipSkipped as e:
    clips.save_skip(clips.clip_path(work_dir, task.key, clips.SKIP_SUFFIX), e.category, str(e))
    return task.key, "skipped", f"{e.category}: {e}"
  except Exception as e:  # pylint: disable=broad-except
    return task.key, "failed", f"error: {type(e).__name__}: {e}"
  clips.save_clip(clips.clip_path(work_dir, task.key), arrays)
  return task.key, "done", ""


def _check_config(work_dir: pathlib.Path, config: dict[str, Any], overwrite: bool) -> None:
  """Writes `config.json`; if an earlier run used other options, raises (or, with
  `overwrite`, deletes its clips)."""
  path = work_dir / CONFIG
  if path.is_file():
    old = json.loads(path.read_text())
    if old != config:
      if not overwrite:
        raise ValueError(
            f"{work_dir} holds clips prepared with other options:\n  before: {old}\n  now:    "
            f"{config}\nrerun with the earlier options, another --work_dir, or --overwrite "
            "(discards the prepared clips)")
      shutil.rmtree(work_dir / "clips", ignore_errors=True)
  work_dir.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(config, indent=1, sort_keys=True))


def _write_manifest(work_dir: pathlib.Path, tasks: Sequence[layout_lib.ClipTask]) -> None:
  from diff2lip_jax.data import builder  # pylint: disable=g-import-not-at-top
  tmp = work_dir / (builder.MANIFEST + ".tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    for t in tasks:
      f.write(json.dumps(dataclasses.asdict(t)) + "\n")
  os.replace(tmp, work_dir / builder.MANIFEST)


def build_dataset(work_dir: str | os.PathLike, data_dir: str | os.PathLike,
                  dataset_name: str) -> tuple[str, dict[str, int]]:
  """Stage 2: (re)builds the tfds dataset from the clips in `work_dir`.

  Returns:
    (dataset directory, {split: number of examples}).
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from diff2lip_jax.data import builder as builder_lib  # pylint: disable=g-import-not-at-top
  b = builder_lib.builder_class(dataset_name)(data_dir=os.fspath(data_dir),
                                               file_format="array_record")
  b.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=os.fspath(work_dir),
      download_mode=tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS,
      compute_stats=tfds.download.ComputeStatsMode.SKIP))
  splits = {name: int(info.num_examples) for name, info in b.info.splits.items()}
  order = {s: i for i, s in enumerate(layout_lib.SPLITS)}
  return os.fspath(b.data_dir), dict(sorted(splits.items(), key=lambda kv: order.get(kv[0], 9)))


def prepare_dataset(input_dir: str | os.PathLike,
                    data_dir: str | os.PathLike,
                    *,
                    layout: Literal["voxceleb2", "lrw", "auto"] = "auto",
                    dataset_name: str | None = None,
                    work_dir: str | os.PathLike | None = None,
                    crop: Literal["fixed", "detect", "auto"] = "auto",
                    options: clips.ProcessOptions | None = None,
                    num_workers: int | None = None,
                    val_fraction: float = 0.01,
                    test_fraction: float = 0.0,
                    val_speakers: Sequence[str] = (),
                    test_speakers: Sequence[str] = (),
                    max_clips: int | None = None,
                    retry_skipped: bool = False,
                    overwrite: bool = False,
                    build: bool = True,
                    progress: bool = True) -> PrepareSummary:
  """Preprocesses the videos of `input_dir` and builds the tfds dataset (see module docstring).

  Args:
    input_dir: folder in the VoxCeleb2 or LRW layout (`layout.scan`).
    data_dir: tfds data dir; the dataset goes to `<data_dir>/<dataset_name>/<version>`.
    layout: "voxceleb2", "lrw" or "auto".
    dataset_name: tfds name; default `diff2lip_voxceleb2` / `diff2lip_lrw` by layout.
    work_dir: per-clip files; default `<data_dir>/downloads/manual/<dataset_name>`.
    crop: "fixed" (upstream VoxCeleb2 crop), "detect" (dlib) or "auto" (fixed for VoxCeleb2,
      detect for LRW); overrides `options.crop`.
    options: the other processing options (`clips.ProcessOptions`; default its defaults).
    num_workers: processes for stage 1 (default: CPU count); 0 or 1 runs in this process.
    val_fraction, test_fraction, val_speakers, test_speakers: VoxCeleb2 split assignment,
      see `layout.scan`.
    max_clips: process at most this many not-yet-finished clips in this run (None: all).
    retry_skipped: also retry clips an earlier run skipped.
    overwrite: discard the work dir's clips if they were prepared with other options.
    build: run stage 2 when every clip is finished or skipped.
    progress: show a tqdm progress bar.

  Returns:
    `PrepareSummary` (also written to `<work_dir>/summary.json`).
  """
  layout_name, tasks, unusable = layout_lib.scan(
      input_dir, layout, val_fraction=val_fraction, test_fraction=test_fraction,
      val_speakers=val_speakers, test_speakers=test_speakers)
  if not tasks:
    raise ValueError(f"no videos found in {input_dir} (suffixes "
                     f"{', '.join(sorted(layout_lib.VIDEO_SUFFIXES))})")
  dataset_name = dataset_name or DEFAULT_NAMES[layout_name]
  work = pathlib.Path(work_dir or pathlib.Path(data_dir) / "downloads" / "manual" / dataset_name)
  options = options or clips.ProcessOptions()
  if crop == "auto":
    crop = "fixed" if layout_name == "voxceleb2" else "detect"
  options = dataclasses.replace(options, crop=crop)
  _check_config(work, {"version": _CONFIG_VERSION, "layout": layout_name,
                       "face_size": clips.FACE_SIZE, "options": options.to_json()}, overwrite)
  _write_manifest(work, tasks)

  summary = PrepareSummary(layout=layout_name, dataset_name=dataset_name, work_dir=str(work),
                           total=len(tasks), unusable=unusable)
  pending = []
  for t in tasks:
    skip_file = clips.clip_path(work, t.key, clips.SKIP_SUFFIX)
    if clips.clip_path(work, t.key).is_file():
      summary.reused += 1
    elif skip_file.is_file() and not retry_skipped:
      category, message = clips.load_skip(skip_file)
      summary.skipped[t.key] = f"{category}: {message}"
    else:
      skip_file.unlink(missing_ok=True)
      pending.append(t)
  if max_clips is not None:
    summary.remaining = max(len(pending) - max_clips, 0)
    pending = pending[:max_clips]

  if num_workers is None:
    num_workers = os.cpu_count() or 1
  items = [(t, options, str(work)) for t in pending]
  with tqdm(total=len(items), desc="clips", unit="clip", disable=not progress) as bar:
    if num_workers <= 1 or len(items) <= 1:
      results = map(_run_task, items)
      pool = None
    else:
      pool = multiprocessing.get_context("spawn").Pool(min(num_workers, len(items)))
      results = pool.imap_unordered(_run_task, items, chunksize=1)
    try:
      for key, status, reason in results:
        if status == "done":
          summary.processed += 1
        else:
          summary.skipped[key] = reason  # "failed" ones are retried by the next run.
        bar.update(1)
        bar.set_postfix(skipped=len(summary.skipped), refresh=False)
    finally:
      if pool is not None:
        pool.terminate()
        pool.join()

  if build and summary.remaining == 0 and summary.reused + summary.processed > 0:
    summary.dataset_dir, summary.splits = build_dataset(work, data_dir, dataset_name)
  (work / SUMMARY).write_text(json.dumps(dataclasses.asdict(summary), indent=1))
  return summary
