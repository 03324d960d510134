"""Upstream's filelists: the one owner of the format (spec §4.1).

One pair per line, `<audio> <video>`, audio first, paths relative to a data root and usually
without extension, e.g. `id00017/01dfn2spqyE/00001 id00017/01dfn2spqyE/00001` under
`vox2_test_mp4/mp4/` (VoxCeleb2) or `ABOUT/test/ABOUT_00001` (LRW). The audio of a pair is the
audio track of that clip's file; upstream reads `<root>/<name>.mp4` for both. Blank lines and
lines starting with `#` are skipped. Upstream names each output
`<audio with / -> .>_<video with / -> .>.mp4` (`Pair.name`).

Used by the filelist batch of `generate` and by `launch.evaluate` (the "reconstruction" and
"cross" lists of the paper).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

SETTINGS = ("reconstruction", "cross")
MEDIA_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".wav", ".mp3", ".m4a", ".flac",
                  ".aac", ".ogg", ".png", ".jpg", ".jpeg")


class FilelistError(ValueError):
  """A filelist is missing or has a malformed line; the message says what to do."""


def _stem(name: str) -> str:
  suffix = pathlib.PurePosixPath(name).suffix
  return name[:-len(suffix)] if suffix.lower() in MEDIA_SUFFIXES else name


@dataclasses.dataclass(frozen=True)
class Pair:
  """One line: drive `video` with `audio`'s track (paths relative to the data root).

  Attributes:
    audio, video: as written in the filelist (with or without extension).
    line: 1-based line number (0 when built in code).
  """

  audio: str
  video: str
  line: int = dataclasses.field(default=0, compare=False)

  @property
  def name(self) -> str:
    """Upstream's output name without `.mp4`: `<audio>_<video>`, `/` -> `.`, extensions cut."""
    return f"{_stem(self.audio).replace('/', '.')}_{_stem(self.video).replace('/', '.')}"


def read_filelist(path: str | os.PathLike) -> list[Pair]:
  """Parses a filelist.

  Raises:
    FilelistError: missing file, or a line that is not two whitespace-separated paths.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FilelistError(f"filelist {path} not found")
  pairs = []
  for number, raw in enumerate(path.read_text().splitlines(), start=1):
    text = raw.strip()
    if not text or text.startswith("#"):
      continue
    fields = text.split()
    if len(fields) != 2:
      raise FilelistError(f"{path}:{number}: expected '<audio> <video>' (two paths relative to "
                          f"the data root), got {text!r}")
    pairs.append(Pair(fields[0], fields[1], number))
  return pairs


def write_filelist(path: str | os.PathLike, pairs: list[Pair]) -> pathlib.Path:
  """Writes `pairs` in upstream's format."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(f"{p.audio} {p.video}\n" for p in pairs))
  return path


def resolve_media(root: str | os.PathLike, name: str, suffix: str = ".mp4") -> pathlib.Path:
  """`root/name` if it exists, else `root/name` + `suffix` (upstream's convention)."""
  path = pathlib.Path(root) / name
  if path.exists():
    return path
  return path.with_name(path.name + suffix)
