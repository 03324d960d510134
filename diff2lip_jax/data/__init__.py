"""Training data: preprocessing to tensorflow-datasets (ArrayRecord) and the grain pipeline.

Importing this package registers the tfds builders `diff2lip_voxceleb2` and `diff2lip_lrw`, so
that `tfds.data_source("diff2lip_voxceleb2", split="train", data_dir=...)` works.

* `python -m diff2lip_jax.data.prepare`: videos -> dataset (`build.prepare_dataset`).
* `pipeline.make_train_iterator`: batches of 5-frame windows for training.
* `sync_pairs.make_sync_iterator`: in-sync / off-sync pairs for training the SyncNet expert.
* `synthetic.make_synthetic_dataset`: small synthetic VoxCeleb2-style folder (no downloads).

The other names below are imported on first use (PEP 562), so that `prepare`'s worker
processes do not pay for importing grain and JAX.
"""

import importlib
from typing import Any

from diff2lip_jax.data.builder import Diff2lipLrw, Diff2lipVoxceleb2, builder_class

_LAZY = {
    "PrepareSummary": "build", "prepare_dataset": "build", "ProcessOptions": "clips",
    "make_train_dataset": "pipeline", "make_train_iterator": "pipeline",
    "make_synthetic_dataset": "synthetic", "make_sync_iterator": "sync_pairs",
}

__all__ = ["Diff2lipLrw", "Diff2lipVoxceleb2", "builder_class", *_LAZY]


def __getattr__(name: str) -> Any:
  if name in _LAZY:
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
