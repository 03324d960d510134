"""Naming a model: the one way every tool (generate, the filelist batch, launch.evaluate, the
notebook, benches, fine-tuning) takes a checkpoint.

`load_model(spec)` accepts

* an **inference checkpoint** directory (`python -m diff2lip_jax.convert` or `... export`):

    DIR/model_flags.json   upstream flag names of the architecture (`models.config.RELEASED_FLAGS`)
    DIR/params/            Orbax (StandardCheckpointer) checkpoint of the Flax params tree
    DIR/s3fd.npz           optional: upstream's face detector (Flax params), used by `generate`

* a **training workdir** (`python -m launch.train`): `W/model_flags.json` (written by the train
  loop) and Orbax checkpoints `W/checkpoints/<step>/state`; the EMA params of the checkpoint with
  the best validation loss (the latest one if none recorded it), or of one step with
  `W/checkpoints/<step>` (or `step=`);
* an **upstream state_dict** file (`.pt`/`.pth` with torch installed, or `.npz`), converted on the
  fly; architecture from `model_flags` (a dict or a JSON file), else the released flags;
* `"random"` (the released architecture, random weights) or `"random:small"` (the small upstream
  test architecture of `../shared/upstream/tfg_small_config.json`): pipeline checks only.

The training workdir's layout (`WORKDIR_CHECKPOINTS`, `STATE_ITEM`, `BEST_METRIC`) is owned here;
`training.checkpointing` writes it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import traverse_util

from diff2lip_jax.models import config as model_config
from diff2lip_jax.models.unet import TFGModel

FLAGS_FILE = "model_flags.json"
PARAMS_DIR = "params"
S3FD_FILE = "s3fd.npz"
CONFIG_FILE = "config.json"           # a training workdir's full config
WORKDIR_CHECKPOINTS = "checkpoints"   # W/checkpoints/<step>/{state,data}
STATE_ITEM = "state"
BEST_METRIC = "val_loss"
RANDOM = "random"
RANDOM_SMALL = "random:small"
# The small upstream architecture of ../shared/upstream/tfg_small_config.json.
SMALL_FLAGS = {"num_channels": 32, "num_res_blocks": 1, "num_head_channels": 32,
               "use_fp16": False}
STATE_DICT_SUFFIXES = (".pt", ".pth", ".npz")


class CheckpointError(ValueError):
  """A checkpoint is missing, incomplete or does not fit its architecture."""


@dataclasses.dataclass
class LoadedModel:
  """What `load_model` returns.

  Attributes:
    model: the `TFGModel` (computation dtype as asked).
    params: its params tree (float32 as stored, or the export's dtype).
    flags: the architecture's upstream flags.
    source: a one-line description of what was loaded (logged).
    s3fd_path: the checkpoint's S3FD weights (`DIR/s3fd.npz`), or None.
    upstream: the weights are upstream's (converted file or a converted directory), so faces
      should be found as upstream did (S3FD) to match their training crops.
  """

  model: TFGModel
  params: Any
  flags: dict
  source: str
  s3fd_path: Optional[pathlib.Path] = None
  upstream: bool = False


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


def save(directory: str | os.PathLike, params: Any, flags: Mapping[str, Any],
         s3fd_params: Any = None) -> pathlib.Path:
  """Writes an inference checkpoint: `params`, `flags` and optionally S3FD's params.

  Raises:
    CheckpointError: the directory already holds a checkpoint.
  """
  from diff2lip_jax.models import s3fd  # pylint: disable=import-outside-toplevel
  directory = pathlib.Path(directory).resolve()
  if (directory / PARAMS_DIR).exists():
    raise CheckpointError(f"{directory} already holds a checkpoint; choose a new --output_dir "
                          "or delete it")
  directory.mkdir(parents=True, exist_ok=True)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(directory / PARAMS_DIR, params)
  checkpointer.wait_until_finished()
  (directory / FLAGS_FILE).write_text(json.dumps(model_config.full_flags(flags), indent=1))
  if s3fd_params is not None:
    s3fd.save_s3fd_params(directory / S3FD_FILE, s3fd_params)
  return directory


def write_workdir_files(workdir: str | os.PathLike, flags: Mapping[str, Any],
                        config: Mapping[str, Any]) -> None:
  """Records a training run's architecture (`model_flags.json`) and its whole config
  (`config.json`) in the workdir, so that the workdir names a model (local or `gs://`: etils
  epath)."""
  from etils import epath  # pylint: disable=import-outside-toplevel
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / FLAGS_FILE).write_text(json.dumps(model_config.full_flags(flags), indent=1))
  (workdir / CONFIG_FILE).write_text(json.dumps(config, indent=1, sort_keys=True, default=str))


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


def _check_matches(params: Any, target: Any, where: str) -> None:
  """Raises CheckpointError unless `params` has exactly the names and shapes of `target`
  (Orbax restores what is on disk even where a target's shapes differ)."""
  got = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(params).items()}
  want = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(target).items()}
  bad = sorted("/".join(k) for k in set(got) ^ set(want))
  bad += sorted(f"{'/'.join(k)} {got[k]} != {want[k]}" for k in set(got) & set(want)
                if got[k] != want[k])
  if bad:
    raise CheckpointError(f"{where} does not match its {FLAGS_FILE}: {len(bad)} params differ "
                          f"(e.g. {bad[0]})")


def _load_export(directory: pathlib.Path, dtype: Any) -> LoadedModel:
  flags = load_flags(directory)
  model = model_config.model_from_flags(flags, dtype=dtype)
  target = abstract_params(model)
  try:
    params = ocp.StandardCheckpointer().restore(directory / PARAMS_DIR)
  except Exception as e:  # Orbax raises several types for structure/shape mismatches.
    raise CheckpointError(f"checkpoint {directory} cannot be read ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200]}); reconvert or re-export it") from e
  _check_matches(params, target, f"checkpoint {directory}")
  params = jax.tree.map(jnp.asarray, params)
  s3fd = directory / S3FD_FILE
  meta = directory / "export.json"
  upstream = not meta.is_file()  # `convert` writes upstream weights, `export` our own
  return LoadedModel(model, params, flags, f"checkpoint {directory}",
                     s3fd if s3fd.is_file() else None, upstream=upstream)


def _workdir_and_step(path: pathlib.Path) -> tuple[pathlib.Path, Optional[int]] | None:
  """(workdir, step or None) if `path` is a training workdir, its checkpoints folder or one
  step folder of it; else None."""
  if (path / WORKDIR_CHECKPOINTS).is_dir():
    return path, None
  if path.name == WORKDIR_CHECKPOINTS and (path.parent / FLAGS_FILE).is_file():
    return path.parent, None
  if path.parent.name == WORKDIR_CHECKPOINTS and path.name.isdigit():
    return path.parent.parent, int(path.name)
  return None


def checkpoint_manager(workdir: pathlib.Path, read_only: bool = True) -> ocp.CheckpointManager:
  """A read-only manager over `W/checkpoints` that knows the best-validation-loss rule."""
  options = ocp.CheckpointManagerOptions(create=False, read_only=read_only,
                                         best_fn=lambda m: m[BEST_METRIC], best_mode="min")
  return ocp.CheckpointManager(workdir.resolve() / WORKDIR_CHECKPOINTS, options=options)


def _load_workdir(workdir: pathlib.Path, step: Optional[int], dtype: Any,
                  use_ema: bool = True) -> LoadedModel:
  if not (workdir / FLAGS_FILE).is_file():
    raise CheckpointError(f"training workdir {workdir} has no {FLAGS_FILE} (written by "
                          "launch.train since it records the architecture); rerun launch.train "
                          "with this workdir once to write it")
  flags = json.loads((workdir / FLAGS_FILE).read_text())
  manager = checkpoint_manager(workdir)
  steps = manager.all_steps()
  if not steps:
    raise CheckpointError(f"training workdir {workdir} has no checkpoint yet; train until the "
                          "first checkpoint_every steps")
  why = f"step {step}"
  if step is None:
    step, why = manager.best_step(), "best validation loss"
    if step is None:
      step, why = manager.latest_step(), "latest; no validation loss recorded"
  elif step not in steps:
    raise CheckpointError(f"{workdir} has no checkpoint {step}; it has {sorted(steps)}")
  manager.close()
  model = model_config.model_from_flags(flags, dtype=dtype)
  field = "ema_params" if use_ema else "params"
  target = {field: abstract_params(model)}
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  restore_args = jax.tree.map(lambda s: ocp.ArrayRestoreArgs(dtype=s.dtype, sharding=device),
                              target)
  path = workdir.resolve() / WORKDIR_CHECKPOINTS / str(step) / STATE_ITEM
  try:
    params = ocp.PyTreeCheckpointer().restore(path, args=ocp.args.PyTreeRestore(
        item=target, restore_args=restore_args, partial_restore=True))[field]
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f"cannot read {path} ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200]})") from e
  _check_matches(params, target[field], f"training checkpoint {path}")
  source = f"training workdir {workdir}: {field.replace('_', ' ')} of step {step} ({why})"
  return LoadedModel(model, params, flags, source)


def _load_state_dict_file(path: pathlib.Path, dtype: Any,
                          model_flags: Mapping[str, Any] | str | os.PathLike | None
                          ) -> LoadedModel:
  from diff2lip_jax.models import torch_io  # pylint: disable=import-outside-toplevel
  if model_flags is not None and not isinstance(model_flags, Mapping):
    model_flags = json.loads(pathlib.Path(model_flags).read_text())
  flags = model_config.full_flags(model_flags or {})
  model = model_config.model_from_flags(flags, dtype=dtype)
  params = torch_io.convert_state_dict(torch_io.load_state_dict(path), abstract_params(model))
  return LoadedModel(model, jax.tree.map(jnp.asarray, params), flags,
                     f"upstream state_dict {path} (converted on the fly)", upstream=True)


def load_model(spec: str | os.PathLike, dtype: Any = jnp.float32, *,
               model_flags: Mapping[str, Any] | str | os.PathLike | None = None,
               step: Optional[int] = None) -> LoadedModel:
  """Loads the model a user names (see the module docstring) and logs what was loaded.

  Args:
    spec: an inference checkpoint directory, a training workdir (or `W/checkpoints/STEP`), an
      upstream `.pt`/`.pth`/`.npz`, "random" or "random:small".
    dtype: computation dtype of the model (params stay as stored).
    model_flags: architecture of an upstream state_dict file (dict or JSON path).
    step: a training workdir's checkpoint step (default: best validation loss).

  Raises:
    CheckpointError: nothing loadable there, with what to do.
  """
  text = str(spec)
  if text in (RANDOM, RANDOM_SMALL):
    flags = model_config.full_flags(SMALL_FLAGS if text == RANDOM_SMALL else {})
    logging.warning("RANDOM WEIGHTS (%s): the architecture untrained; the lower face will be "
                    "noise. Pass a trained or converted checkpoint for real lip-sync.", text)
    model = model_config.model_from_flags(flags, dtype=dtype)
    loaded = LoadedModel(model, init_params(model, jax.random.key(0)), flags,
                         f"random weights ({text})")
  else:
    path = pathlib.Path(spec)
    found = _workdir_and_step(path) if path.is_dir() else None
    if path.is_file() and path.suffix in STATE_DICT_SUFFIXES:
      loaded = _load_state_dict_file(path, dtype, model_flags)
    elif found is not None and not (path / PARAMS_DIR).is_dir():
      workdir, path_step = found
      loaded = _load_workdir(workdir, step if step is not None else path_step, dtype)
    elif path.is_dir() and (path / PARAMS_DIR).is_dir():
      loaded = _load_export(path, dtype)
    else:
      raise CheckpointError(
          f"{spec} is not a model: pass a checkpoint directory (diff2lip_jax.convert / export), "
          "a launch.train workdir, an upstream .pt/.npz, or 'random'")
  logging.info("model: %s", loaded.source)
  return loaded


def export(workdir: str | os.PathLike, output_dir: str | os.PathLike,
           step: Optional[int] = None, dtype: Any = None) -> pathlib.Path:
  """Writes a standalone inference checkpoint of a training workdir's EMA params.

  Args:
    workdir: a `launch.train` workdir (or `W/checkpoints/STEP`).
    output_dir: where to write (must not hold a checkpoint).
    step: checkpoint step (default: best validation loss, else latest).
    dtype: store the params in this dtype (e.g. bfloat16: half the size); None keeps float32.

  Raises:
    CheckpointError: no such workdir/step, or `output_dir` is taken.
  """
  path = pathlib.Path(workdir)
  found = _workdir_and_step(path) if path.is_dir() else None
  if found is None:
    raise CheckpointError(f"{workdir} is not a launch.train workdir (no {WORKDIR_CHECKPOINTS}/)")
  loaded = _load_workdir(found[0], step if step is not None else found[1], jnp.float32)
  params = loaded.params
  if dtype is not None:
    params = jax.tree.map(lambda x: np.asarray(x).astype(jnp.dtype(dtype)), params)
  out = save(output_dir, params, loaded.flags)
  (out / "export.json").write_text(json.dumps(
      {"source": loaded.source, "dtype": str(jnp.dtype(dtype or jnp.float32))}, indent=1))
  return out
