"""The trainers' data set-up: the tfds `data_dir` of a run, building the synthetic dataset first
when `config.data.synthetic` asks for it (both `train` and `syncnet_train` use this).

Multi-host: only process 0 looks at the disk and builds; every process then meets at one barrier
that it always reaches (whether or not the data existed), so a host that starts late never skips
it. The synthetic dataset is written to a local directory that all processes of the run must see
(one machine, or a shared file system); a `gs://` data_dir is read only (prepare the data with
`python -m diff2lip_jax.data.prepare`).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
from etils import epath

from diff2lip_jax.training import paths

DATA_READY_BARRIER = "diff2lip synthetic data ready"


def prepare_data(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
                 val_ids: int = 0) -> epath.Path:
  """The tfds data_dir of a run.

  Args:
    config: a trainer config; reads `data.data_dir`, `data.dataset_name`, `data.synthetic`,
      `data.synthetic_ids`, `data.synthetic_clips_per_id`, `data.synthetic_seconds`, `seed`.
    workdir: the run's workdir; the synthetic dataset defaults to `workdir/data`.
    val_ids: with `data.synthetic`, the last that many speakers form the `val` split
      (held-out speakers); 0: every clip is in `train`.

  Returns:
    `data.data_dir` (or `workdir/data` for synthetic data without a data_dir) as an epath.

  Raises:
    ValueError: no `data.data_dir` for real data, or synthetic data asked on a remote path.
  """
  dc = config.data
  if not dc.synthetic:
    if not dc.data_dir:
      raise ValueError("config.data.data_dir is empty: pass --config.data.data_dir=DIR (a tfds "
                       "data dir from `python -m diff2lip_jax.data.prepare`)")
    return epath.Path(dc.data_dir)
  data_dir = epath.Path(dc.data_dir) if dc.data_dir else epath.Path(workdir) / "data"
  if not paths.is_local(data_dir):
    raise ValueError(f"data.synthetic writes its dataset locally; {data_dir} is remote: set "
                     "--config.data.data_dir to a local directory")
  if jax.process_index() == 0 and not (data_dir / dc.dataset_name).exists():
    from diff2lip_jax import data  # pylint: disable=import-outside-toplevel
    videos = os.fspath(data_dir / "videos")
    data.make_synthetic_dataset(videos, num_ids=dc.synthetic_ids,
                                clips_per_id=dc.synthetic_clips_per_id,
                                seconds=dc.synthetic_seconds, seed=config.seed)
    val = [f"id{i:05d}" for i in range(dc.synthetic_ids - val_ids + 1, dc.synthetic_ids + 1)]
    data.prepare_dataset(videos, os.fspath(data_dir), dataset_name=dc.dataset_name,
                         val_fraction=0.0, val_speakers=val, num_workers=1, progress=False)
  barrier(DATA_READY_BARRIER)
  return data_dir


def barrier(name: str, timeout_s: int = 3600) -> None:
  """Waits until every process reaches `name` (once per name and run) through the coordination
  service, not a device collective: CPU (gloo) collectives give up after 30 s, and process 0
  may build data for minutes meanwhile. No-op in a single process."""
  if jax.process_count() > 1:
    from orbax.checkpoint import multihost  # pylint: disable=import-outside-toplevel
    multihost.sync_global_processes(name, timeout=timeout_s,
                                    processes=set(range(jax.process_count())))


def check_batch_size(name: str, batch_size: int, mesh: jax.sharding.Mesh,
                     accum_steps: int = 1) -> int:
  """This host's share of a global batch; raises ValueError (one line) unless `batch_size`
  divides by the hosts, the mesh's batch shards (data x fsdp) and `accum_steps`."""
  shards = int(mesh.shape["data"] * mesh.shape["fsdp"])
  hosts = jax.process_count()
  if batch_size < 1 or batch_size % hosts or batch_size % shards or batch_size % accum_steps:
    raise ValueError(f"{name}={batch_size} must be a positive multiple of the {hosts} host(s), "
                     f"the {shards} batch shards of the mesh (data x fsdp over "
                     f"{mesh.size} devices) and accum_steps={accum_steps}")
  return batch_size // hosts


def compile_in_step(name: str, *lowered: Any) -> list[Any]:
  """Compiles `jax.jit(...).lower(...)` results, then waits for every process (`barrier`).

  Multi-process runs call this before their first collective: a process whose programs come
  from the persistent compilation cache (only process 0 reads its own entries back) would
  otherwise wait in the first collective while another compiles, and CPU (gloo) collectives
  give up after 30 s. Returns the compiled executables (use them instead of the jitted
  functions, which would compile again).
  """
  compiled = [lw.compile() for lw in lowered]
  barrier(name)
  return compiled
