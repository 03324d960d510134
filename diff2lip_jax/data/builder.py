"""tensorflow-datasets builders of the preprocessed talking-face clips (ArrayRecord).

`python -m diff2lip_jax.data.prepare` first turns every video into a clip .npz in a work dir
(`clips.process_clip`), then builds the dataset with one of these builders, whose manual dir is
that work dir. Once built, no TensorFlow is needed to read it:

    import diff2lip_jax.data  # registers the builders
    source = tfds.data_source("diff2lip_voxceleb2", split="train", data_dir=DATA_DIR)
    ex = source[0]

One example per clip (records in tfds' usual hashed-key order):

| feature | shape, dtype | meaning |
|---|---|---|
| `frames` | N x [128, 128, 3] uint8 (JPEG) | face crop of every frame, RGB (a list) |
| `mel` | [T, 80] float32 | mel spectrogram in [-4, 4], 80 steps/s (`audio.melspectrogram`.T) |
| `fps` | float64 | frame rate; frame j is at j / fps seconds |
| `num_frames` | int32 | N |
| `boxes` | [N, 4] int32 | crop box [x1, y1, x2, y2] in source-video pixels |
| `face_found` | [N] bool | a face was detected (always True for the fixed crop) |
| `video_size` | [2] int32 | (H, W) of the source video |
| `speaker_id` | str | VoxCeleb2 speaker (`id00012`) or LRW word |
| `clip_id` | str | `id00012/21Uxsk56VDQ/00001` or `ABOUT/test/ABOUT_00001` |
| `source` | str | video path relative to the input folder, without suffix |

Registered names: `diff2lip_voxceleb2`, `diff2lip_lrw` (`builder_class(name)` makes a builder for
any other name; such datasets are read back by `tfds.data_source` from their files alone).
"""

from __future__ import annotations

import json
import pathlib
import re
import types
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from diff2lip_jax.data import clips

MANIFEST = "manifest.jsonl"  # In the work dir: one JSON line per clip task.
DATASET_VERSION = "1.0.0"


def features() -> tfds.features.FeaturesDict:
  """The feature spec of every diff2lip clip dataset (see the module docstring)."""
  size = clips.FACE_SIZE
  return tfds.features.FeaturesDict({
      "frames": tfds.features.Sequence(
          tfds.features.Image(shape=(size, size, 3), encoding_format="jpeg")),
      "mel": tfds.features.Tensor(shape=(None, 80), dtype=np.float32),
      "fps": tfds.features.Scalar(dtype=np.float64),
      "num_frames": tfds.features.Scalar(dtype=np.int32),
      "boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.int32),
      "face_found": tfds.features.Tensor(shape=(None,), dtype=np.bool_),
      "video_size": tfds.features.Tensor(shape=(2,), dtype=np.int32),
      "speaker_id": tfds.features.Text(),
      "clip_id": tfds.features.Text(),
      "source": tfds.features.Text(),
  })


def read_manifest(work_dir: str | pathlib.Path) -> list[dict[str, str]]:
  """The clip tasks listed in `<work_dir>/manifest.jsonl` (dicts of `layout.ClipTask` fields)."""
  path = pathlib.Path(work_dir) / MANIFEST
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found: run `python -m diff2lip_jax.data.prepare` "
                            "first (it writes the work dir)")
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


class Diff2LipClips(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Face crops + mel spectrograms of talking-face clips, one example per clip."""

  VERSION = tfds.core.Version(DATASET_VERSION)
  RELEASE_NOTES = {DATASET_VERSION: "Initial release: 128x128 JPEG face crops, [T, 80] mel."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Build this dataset with `python -m diff2lip_jax.data.prepare --input_dir VIDEOS "
      "--data_dir DATA_DIR`; it preprocesses the videos into the manual dir (its work dir).")

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    """This module's file. tfds 4.9 finds it through `importlib_resources`, which it only
    installs on Python < 3.9, and fails without it for builders defined inside a package."""
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=("Talking-face clips for Diff2Lip training: 128x128 face crops of every "
                     "frame and the Wav2Lip/Diff2Lip mel spectrogram of the audio."),
        features=features(),
        homepage="https://github.com/soumik-kanad/diff2lip",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
    work_dir = pathlib.Path(dl_manager.manual_dir)
    by_split: dict[str, list[str]] = {}
    for entry in read_manifest(work_dir):
      if clips.clip_path(work_dir, entry["key"]).is_file():
        by_split.setdefault(entry["split"], []).append(entry["key"])
    if not by_split:
      raise ValueError(f"no processed clips in {work_dir}; nothing to build")
    return {split: self._generate_examples(work_dir, sorted(keys))
            for split, keys in by_split.items()}

  def _generate_examples(self, work_dir: pathlib.Path,
                         keys: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yields (clip key, example) for the given processed clips."""
    for key in keys:
      c = clips.load_clip(clips.clip_path(work_dir, key))
      yield key, {
          "frames": c["frames"],
          "mel": c["mel"],
          "fps": float(c["fps"]),
          "num_frames": len(c["frames"]),
          "boxes": c["boxes"],
          "face_found": c["face_found"],
          "video_size": c["video_size"],
          "speaker_id": c["speaker_id"],
          "clip_id": c["clip_id"],
          "source": c["source"],
      }


class Diff2lipVoxceleb2(Diff2LipClips):
  """VoxCeleb2 clips, fixed upstream crop (`my_voxceleb2_crop`)."""

  name = "diff2lip_voxceleb2"


class Diff2lipLrw(Diff2LipClips):
  """LRW clips, detected and smoothed face boxes."""

  name = "diff2lip_lrw"


REGISTERED = {cls.name: cls for cls in (Diff2lipVoxceleb2, Diff2lipLrw)}


def builder_class(dataset_name: str) -> type[Diff2LipClips]:
  """The builder class for `dataset_name`: a registered one, or a new unregistered subclass
  named `dataset_name` (tfds reads such a dataset back from its files)."""
  if dataset_name in REGISTERED:
    return REGISTERED[dataset_name]
  if not re.fullmatch(r"[a-z][a-z0-9_]*", dataset_name or ""):
    raise ValueError(f"dataset name must be lower-case letters, digits and '_' (starting with a "
                     f"letter), got {dataset_name!r}")
  return types.new_class(tfds.core.naming.snake_to_camelcase(dataset_name), (Diff2LipClips,),
                         {"skip_registration": True},
                         lambda ns: ns.update(name=dataset_name))
