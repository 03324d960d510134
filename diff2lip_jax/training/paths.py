"""Workdir, data and checkpoint paths of the trainers, local or remote (`gs://`, `s3://`).

Every path a trainer touches goes through `etils.epath`, never `pathlib.Path(str)` (which turns
`gs://b/r` into the local `gs:/b/r`) or builtin `open`. `epath.Path.resolve()` has the same flaw
on remote paths, hence `absolute`. Remote paths need their file-system package on every host:
`pip install gcsfs` for `gs://` (epath's fsspec back-end; or TensorFlow's `tf.io.gfile`), and
Orbax writes arrays to `gs://` itself (tensorstore). Credentials: the VM's service account.
"""

from __future__ import annotations

import os

from etils import epath


def is_local(path: str | os.PathLike) -> bool:
  """Whether `path` is on the local file system (no `scheme://` prefix)."""
  return "://" not in os.fspath(path)


def absolute(path: str | os.PathLike) -> epath.Path:
  """`path` as an absolute epath: local paths resolved, remote URIs (`gs://...`) kept as given."""
  p = epath.Path(path)
  return p.resolve() if is_local(p) else p
