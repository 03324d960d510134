"""Finds the clips of a VoxCeleb2- or LRW-style folder and assigns them to splits.

Layouts (relative to `input_dir`; any number of leading folders is allowed):

* VoxCeleb2 (`voxceleb2`): `.../<speaker id>/<youtube id>/<utterance>.mp4`, e.g.
  `dev/mp4/id00012/21Uxsk56VDQ/00001.mp4`. The clip id is `id00012/21Uxsk56VDQ/00001`, the
  format of upstream's file lists (spec §4.1). A clip below a folder named `test` (e.g. the
  official `vox2_test_mp4/test/mp4`) goes to the test split, below `val`/`valid`/`validation`
  to val; every other clip (the official dev set) goes to train, except that whole speakers
  are held out for val/test: the ones listed explicitly, else a deterministic fraction chosen
  by hashing the speaker id (SHA-1), so that no speaker is in two splits.
* LRW (`lrw`): `.../<WORD>/<train|val|test>/<WORD>_<nnnnn>.mp4`; the folder gives the split,
  the clip id is `WORD/test/WORD_00001` (upstream's LRW file lists), the "speaker" id is the
  word (LRW has no speaker labels).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
import pathlib
from typing import Iterable, Literal, Sequence

VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v"})
LAYOUTS = ("voxceleb2", "lrw")
SPLITS = ("train", "val", "test")
_LRW_SPLITS = frozenset({"train", "val", "test"})
_VAL_FOLDERS = frozenset({"val", "valid", "validation"})

Layout = Literal["voxceleb2", "lrw"]


@dataclasses.dataclass(frozen=True)
class ClipTask:
  """One video to turn into a dataset example.

  Attributes:
    key: the video's path relative to `input_dir` without suffix, POSIX separators; unique,
      used as the tfds key and for the clip's files in the work dir.
    path: absolute path of the video file.
    speaker_id: VoxCeleb2 speaker id (`id00012`) or LRW word (`ABOUT`).
    clip_id: `id00012/21Uxsk56VDQ/00001` or `ABOUT/test/ABOUT_00001`.
    split: "train", "val" or "test".
  """

  key: str
  path: str
  speaker_id: str
  clip_id: str
  split: str


def find_videos(input_dir: str | os.PathLike) -> list[pathlib.Path]:
  """All files below `input_dir` with a video suffix (`VIDEO_SUFFIXES`), sorted, hidden
  files and folders (names starting with '.') excluded."""
  root = pathlib.Path(input_dir)
  if not root.is_dir():
    raise FileNotFoundError(f"input folder not found: {root}")
  found = []
  for folder, dirs, files in os.walk(root):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    for name in files:
      if not name.startswith(".") and os.path.splitext(name)[1].lower() in VIDEO_SUFFIXES:
        found.append(pathlib.Path(folder) / name)
  return sorted(found)


def detect_layout(rel_paths: Iterable[pathlib.PurePath]) -> Layout:
  """"lrw" if most videos sit in a `train`/`val`/`test` folder, else "voxceleb2"."""
  rel_paths = list(rel_paths)
  lrw = sum(len(p.parts) >= 3 and p.parts[-2] in _LRW_SPLITS for p in rel_paths)
  return "lrw" if rel_paths and 2 * lrw > len(rel_paths) else "voxceleb2"


def speaker_fraction(speaker_id: str) -> float:
  """Deterministic pseudo-uniform number in [0, 1) from the SHA-1 of the speaker id."""
  digest = hashlib.sha1(speaker_id.encode("utf-8")).hexdigest()
  return int(digest[:8], 16) / 2.0**32


def _voxceleb2_split(parts: Sequence[str], speaker: str, val_fraction: float,
                     test_fraction: float, val_speakers: frozenset[str],
                     test_speakers: frozenset[str]) -> str:
  folders = {p.lower() for p in parts[:-3]}
  if "test" in folders or speaker in test_speakers:
    return "test"
  if folders & _VAL_FOLDERS or speaker in val_speakers:
    return "val"
  if val_speakers or test_speakers:  # Explicit lists replace the hashed fractions.
    return "train"
  u = speaker_fraction(speaker)
  if u < val_fraction:
    return "val"
  if u < val_fraction + test_fraction:
    return "test"
  return "train"


def scan(input_dir: str | os.PathLike,
         layout: Literal["voxceleb2", "lrw", "auto"] = "auto",
         val_fraction: float = 0.01,
         test_fraction: float = 0.0,
         val_speakers: Sequence[str] = (),
         test_speakers: Sequence[str] = ()) -> tuple[Layout, list[ClipTask], dict[str, str]]:
  """Lists the clips of `input_dir` and their splits.

  Args:
    input_dir: root folder of the videos.
    layout: "voxceleb2", "lrw" or "auto" (`detect_layout`).
    val_fraction, test_fraction: VoxCeleb2 only: fractions of the speakers outside any
      `test`/`val` folder held out for val and test (by `speaker_fraction`).
    val_speakers, test_speakers: VoxCeleb2 only: explicit speaker ids for val / test; if
      either is given the fractions are not used.

  Returns:
    (layout, tasks sorted by key, unusable {relative path: reason} for files that do not fit
    the layout).
  """
  root = pathlib.Path(input_dir).resolve()
  paths = find_videos(root)
  rels = [p.relative_to(root) for p in paths]
  if layout == "auto":
    layout = detect_layout(rels)
  if layout not in LAYOUTS:
    raise ValueError(f"unknown layout {layout!r}; choose one of {LAYOUTS + ('auto',)}")
  if not (val_fraction >= 0 and test_fraction >= 0 and val_fraction + test_fraction <= 1):
    raise ValueError(f"need 0 <= val_fraction, test_fraction and a sum <= 1, got "
                     f"{val_fraction}, {test_fraction}")
  val_set, test_set = frozenset(val_speakers), frozenset(test_speakers)
  tasks, unusable = [], {}
  for path, rel in zip(paths, rels):
    parts = rel.parts
    key = rel.with_suffix("").as_posix()
    if len(parts) < 3:
      expected = ("<id>/<clip>/<utterance>.mp4" if layout == "voxceleb2"
                  else "<WORD>/<split>/<WORD>_<n>.mp4")
      unusable[rel.as_posix()] = f"not in the {layout} layout {expected}"
      continue
    stem = rel.stem
    if layout == "voxceleb2":
      speaker = parts[-3]
      clip_id = f"{speaker}/{parts[-2]}/{stem}"
      split = _voxceleb2_split(parts, speaker, val_fraction, test_fraction, val_set, test_set)
    else:
      if parts[-2] not in _LRW_SPLITS:
        unusable[rel.as_posix()] = "not in a train/val/test folder (LRW layout)"
        continue
      speaker, split = parts[-3], parts[-2]
      clip_id = f"{speaker}/{split}/{stem}"
    tasks.append(ClipTask(key=key, path=str(path), speaker_id=speaker, clip_id=clip_id,
                          split=split))
  tasks.sort(key=lambda t: t.key)
  return layout, tasks, unusable


def split_counts(tasks: Iterable[ClipTask]) -> dict[str, int]:
  """{split: number of tasks}, in `SPLITS` order."""
  counts = collections.Counter(t.split for t in tasks)
  return {s: counts[s] for s in SPLITS if counts[s]}
