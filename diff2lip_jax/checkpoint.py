"""Inference checkpoints: an Orbax checkpoint of the parameters plus the architecture's flags.

Layout of a checkpoint directory:

  DIR/model_flags.json   upstream flag names of the architecture (`models.config.RELEASED_FLAGS`)
  DIR/params/            Orbax (StandardCheckpointer) checkpoint of the Flax params tree
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import traverse_util

from diff2lip_jax.models import config as model_config
from diff2lip_jax.models.unet import TFGModel

FLAGS_FILE = "model_flags.json"
PARAMS_DIR = "params"


class CheckpointError(ValueError):
  """A checkpoint is missing, incomplete or does not fit its architecture."""


def _dummy_inputs(model: TFGModel) -> tuple:
  """One frame of zeros in `TFGModel.__call__`'s positional layout, for `init`."""
  image_size = model.image_size
  img = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  mask = jnp.zeros((1, image_size, image_size, 1), jnp.float32)
  ref = jnp.zeros((1, image_size, image_size, 3 * model.nrefer), jnp.float32) if model.nrefer else None
  return img, jnp.zeros((1,), jnp.int32), img, mask, ref, jnp.zeros((1, 80, 16), jnp.float32)


def abstract_params(model: TFGModel) -> Any:
  """The params tree of `model` as `jax.ShapeDtypeStruct`s (no memory, no compute)."""
  inputs = _dummy_inputs(model)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), *inputs))["params"]


def init_params(model: TFGModel, rng: jax.Array) -> Any:
  """Randomly initialised params (Flax default initialisers; upstream zero-initialises its
  output convs, which would make an untrained model's ε exactly 0)."""
  return jax.jit(model.init)(rng, *_dummy_inputs(model))["params"]


def save(directory: str | os.PathLike, params: Any, flags: dict) -> pathlib.Path:
  """Writes `params` and `flags` to `directory` (created; must not hold a checkpoint already).

  Raises:
    CheckpointError: the directory already holds a checkpoint.
  """
  directory = pathlib.Path(directory).resolve()
  if (directory / PARAMS_DIR).exists():
    raise CheckpointError(f"{directory} already holds a checkpoint; choose a new --output_dir "
                          "or delete it")
  directory.mkdir(parents=True, exist_ok=True)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(directory / PARAMS_DIR, params)
  checkpointer.wait_until_finished()
  (directory / FLAGS_FILE).write_text(json.dumps(model_config.full_flags(flags), indent=1))
  return directory


def load_flags(directory: str | os.PathLike) -> dict:
  """Reads `DIR/model_flags.json`. Raises CheckpointError if the directory is not a checkpoint."""
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    raise CheckpointError(f"checkpoint {directory} not found; convert one with "
                          "`python -m diff2lip_jax.convert` (see README)")
  if not (directory / FLAGS_FILE).is_file() or not (directory / PARAMS_DIR).is_dir():
    raise CheckpointError(f"{directory} is not a diff2lip-jax checkpoint (needs {FLAGS_FILE} "
                          f"and {PARAMS_DIR}/); convert one with `python -m diff2lip_jax.convert`")
  return json.loads((directory / FLAGS_FILE).read_text())


def load(directory: str | os.PathLike, dtype: Any = jnp.float32) -> tuple[TFGModel, Any]:
  """Loads a checkpoint written by `save`.

  Args:
    directory: the checkpoint directory.
    dtype: computation dtype of the returned model (params are restored as stored).

  Returns:
    (model, params).

  Raises:
    CheckpointError: missing directory, missing files, or params that do not fit the flags.
  """
  directory = pathlib.Path(directory).resolve()
  flags = load_flags(directory)
  model = model_config.model_from_flags(flags, dtype=dtype)
  target = abstract_params(model)
  try:
    params = ocp.StandardCheckpointer().restore(directory / PARAMS_DIR, target)
  except Exception as e:  # Orbax raises several types for structure/shape mismatches.
    raise CheckpointError(f"checkpoint {directory} does not match its {FLAGS_FILE} "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); reconvert it "
                          "with `python -m diff2lip_jax.convert`") from e
  _check_matches(params, target, directory)
  return model, params


def _check_matches(params: Any, target: Any, directory: pathlib.Path) -> None:
  """Raises CheckpointError unless `params` has exactly the names and shapes of `target`.

  (Orbax restores what is on disk even where a target's shapes differ.)
  """
  got = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(params).items()}
  want = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(target).items()}
  bad = sorted("/".join(k) for k in set(got) ^ set(want))
  bad += sorted(f"{'/'.join(k)} {got[k]} != {want[k]}" for k in set(got) & set(want)
                if got[k] != want[k])
  if bad:
    raise CheckpointError(f"checkpoint {directory} does not match its {FLAGS_FILE}: "
                          f"{len(bad)} params differ (e.g. {bad[0]}); reconvert it with "
                          "`python -m diff2lip_jax.convert`")
