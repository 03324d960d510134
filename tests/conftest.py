"""Shared pytest fixtures: the upstream reference tensors beside the project root."""

import os
import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
UPSTREAM = SHARED / "upstream"


@pytest.fixture(scope="session")
def upstream_dir() -> pathlib.Path:
  """`../shared/upstream`: reference tensors produced by upstream's PyTorch code."""
  if not UPSTREAM.is_dir():
    pytest.fail(f"reference data missing: {UPSTREAM} (the shared/ folder beside the repo)")
  return UPSTREAM


@pytest.fixture(scope="session")
def small_flags(upstream_dir) -> dict:
  """Upstream flags of the small TFGModel whose weights are in `tfg_small.npz`."""
  import json
  return json.loads((upstream_dir / "tfg_small_config.json").read_text())["model"]


@pytest.fixture(scope="session")
def small_model_params(upstream_dir, small_flags):
  """(model, params): the small upstream model converted from `tfg_small.npz`, float32."""
  from diff2lip_jax.inference import checkpoints
  from diff2lip_jax.models import torch_io
  from diff2lip_jax.models import model_from_flags
  model = model_from_flags(small_flags)
  params = torch_io.convert_state_dict(torch_io.load_state_dict(upstream_dir / "tfg_small.npz"),
                                      checkpoints.abstract_params(model))
  return model, params


@pytest.fixture(scope="session")
def small_io(upstream_dir) -> dict:
  """`tfg_small_io.npz` with image tensors moved to NHWC."""
  import numpy as np
  with np.load(upstream_dir / "tfg_small_io.npz") as z:
    return {k: (z[k].transpose(0, 2, 3, 1) if z[k].ndim == 4 else z[k]) for k in z.files}


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory, upstream_dir, small_flags):
  """A diff2lip-jax checkpoint directory converted from the small upstream model."""
  from diff2lip_jax import convert
  return convert.convert(upstream_dir / "tfg_small.npz",
                         tmp_path_factory.mktemp("ckpt") / "small", small_flags)


@pytest.fixture(scope="session")
def trainer_env(tmp_path_factory) -> dict:
  """Environment for trainer subprocesses (tests/test_train*.py): the repo importable, one persistent compilation
  cache shared by them (reruns and resumes recompile nothing), and XLA:CPU's cheapest
  optimisation level (these small programs compile longer than they run at full level)."""
  e = dict(os.environ)
  e["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + e.get("PYTHONPATH", "")
  e["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("jax_cache"))
  e["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  e["XLA_FLAGS"] = (e.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
                    " --xla_llvm_disable_expensive_passes=true").strip()
  return e
