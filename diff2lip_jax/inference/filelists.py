"""Upstream's evaluation file lists (spec §4.1).

One pair per line, `<audio_clip> <video_clip>`, audio first, paths relative to the dataset root
and without extension, e.g. `id00017/01dfn2spqyE/00001 id00017/01dfn2spqyE/00001` under
`vox2_test_mp4/mp4/` (VoxCeleb2) or `ABOUT/test/ABOUT_00001` (LRW, after upstream's
`lrw_fullpath.py`). The audio of a pair is the audio track of that clip's video file.
Upstream names each output `<audio with / -> .>_<video with / -> .>.mp4`.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

SETTINGS = ("reconstruction", "cross")


class FilelistError(ValueError):
  """A file list is missing or has a malformed line."""


@dataclasses.dataclass(frozen=True)
class Pair:
  """One evaluation item: drive `video` (relative path, no extension) with `audio`'s track."""

  audio: str
  video: str

  @property
  def name(self) -> str:
    """Upstream's output name (without `.mp4`): `<audio>_<video>` with `/` -> `.`."""
    return f"{self.audio.replace('/', '.')}_{self.video.replace('/', '.')}"


def _strip_ext(rel: str, ext: str) -> str:
  return rel[:-len(ext)] if ext and rel.endswith(ext) else rel


def read_filelist(path: str | os.PathLike, ext: str = ".mp4") -> list[Pair]:
  """Parses a file list; blank lines and lines starting with `#` are skipped, and a trailing
  `ext` on a path is tolerated.

  Raises:
    FilelistError: missing file, or a line that is not two whitespace-separated paths.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FilelistError(f"file list {path} not found")
  pairs = []
  for n, line in enumerate(path.read_text().splitlines(), 1):
    line = line.strip()
    if not line or line.startswith("#"):
      continue
    parts = line.split()
    if len(parts) != 2:
      raise FilelistError(f"{path}:{n}: expected '<audio_clip> <video_clip>', got {line!r}")
    pairs.append(Pair(_strip_ext(parts[0], ext), _strip_ext(parts[1], ext)))
  return pairs


def write_filelist(path: str | os.PathLike, pairs: list[Pair]) -> pathlib.Path:
  """Writes `pairs` in upstream's format."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(f"{p.audio} {p.video}\n" for p in pairs))
  return path
