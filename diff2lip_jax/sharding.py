"""Device mesh and the one place where arrays are mapped onto it.

Mesh axes (maxtext style): `data` (pure data parallelism), `fsdp` (data parallelism with
parameters, optimizer state and EMA sharded), `model` (tensor parallelism over input
channels; 1 unless asked for). The batch is split over `data` x `fsdp`.

Parameters get *logical* axis names from their kind (`logical_axes`), and `LOGICAL_RULES` maps
logical names to mesh axes. A dimension is only sharded over a mesh axis whose size divides
it; otherwise it stays replicated (e.g. the 6-channel output conv).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")

# Logical axis -> mesh axis (None: replicated). The only sharding rules of the project.
LOGICAL_RULES: dict[str, Any] = {
    "batch": BATCH_AXES,
    "out_channels": "fsdp",    # conv/dense output features
    "in_channels": "model",    # conv/dense input features
    "channels": None,          # biases, norm scales
    "kernel_spatial": None,
}


def make_mesh(data: int = -1, fsdp: int = 1, model: int = 1,
              devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A (data, fsdp, model) mesh over `devices` (default: all devices of all hosts).

  One of the sizes may be -1: it takes the remaining devices.

  Raises:
    ValueError: the sizes do not multiply to the device count.
  """
  devices = list(devices if devices is not None else jax.devices())
  sizes = [data, fsdp, model]
  if sizes.count(-1) > 1:
    raise ValueError("at most one mesh axis size may be -1")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"{len(devices)} devices cannot be split into mesh {sizes}")
    sizes[sizes.index(-1)] = len(devices) // known
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(f"mesh data={sizes[0]} x fsdp={sizes[1]} x model={sizes[2]} needs "
                     f"{int(np.prod(sizes))} devices, have {len(devices)}")
  return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def logical_axes(path: Sequence[Any], shape: Sequence[int]) -> tuple[Optional[str], ...]:
  """Logical axis names of a parameter (or optimizer-state leaf) from its name and rank.

  Conv kernels [kh, kw, in, out] / [k, in, out] and dense kernels [in, out] get
  (..., "in_channels", "out_channels"); vectors get ("channels",); scalars ().
  """
  name = str(getattr(path[-1], "key", path[-1])) if path else ""
  rank = len(shape)
  if name == "kernel" and rank >= 2:
    return ("kernel_spatial",) * (rank - 2) + ("in_channels", "out_channels")
  if rank == 1:
    return ("channels",)
  return (None,) * rank


def spec_for(logical: Sequence[Optional[str]], shape: Sequence[int], mesh: Mesh) -> P:
  """PartitionSpec for a leaf, applying `LOGICAL_RULES` where the mesh axis size divides."""
  spec = []
  for name, dim in zip(logical, shape):
    axes = LOGICAL_RULES.get(name) if name else None
    if axes is None:
      spec.append(None)
      continue
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    size = int(np.prod([mesh.shape[a] for a in axes]))
    spec.append((axes if len(axes) > 1 else axes[0]) if size > 1 and dim % size == 0 else None)
  return P(*spec)


def tree_shardings(tree: Any, mesh: Mesh) -> Any:
  """NamedShardings for every leaf of a (possibly abstract) params/optimizer/EMA tree."""
  return jax.tree_util.tree_map_with_path(
      lambda path, x: NamedSharding(mesh, spec_for(logical_axes(path, x.shape), x.shape, mesh)),
      tree)


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
  """Sharding of a batch array: leading axis over data x fsdp, the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each host's slice of the batch into global arrays sharded over data x fsdp."""
  return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(v)), v)
          for k, v in local.items()}


def local_mesh() -> Mesh:
  """A mesh over this host's devices with every device on `data` (shape (n, 1, 1)): the mesh
  for pure data parallelism within a host, e.g. the frame sampler's batch."""
  return make_mesh(data=-1, devices=jax.local_devices())


def batch_size_multiple(mesh: Mesh) -> int:
  """The number of shards of a batch on `mesh` (data x fsdp): batch sizes must divide by it."""
  return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def round_up(n: int, multiple: int) -> int:
  """Smallest multiple of `multiple` that is >= n (and >= multiple)."""
  return max(int(multiple), -(-int(n) // int(multiple)) * int(multiple))


def pad_batch(x: Any, n: int) -> Any:
  """Pads axis 0 of `x` (numpy or jax) to length `n` by repeating its last row: fixed batch
  shapes (one compilation) and device-count multiples. The caller cuts the padding off."""
  if x.shape[0] == n:
    return x
  xp = np if isinstance(x, np.ndarray) else jax.numpy
  return xp.concatenate([x, xp.repeat(x[-1:], n - x.shape[0], axis=0)])


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Puts every leaf of `tree` on all devices of `mesh`."""
  return jax.device_put(tree, replicated(mesh))


def shard_batch(x: Any, mesh: Mesh) -> jax.Array:
  """Splits axis 0 of `x` over the mesh's batch axes (its length must divide by their size)."""
  return jax.device_put(x, batch_sharding(mesh, np.ndim(x)))


def batched_apply(fn: Any, x: np.ndarray, batch: int, mesh: Mesh) -> np.ndarray:
  """`fn` over `x` [N, ...] in fixed-size batches sharded over `mesh`; returns [N, ...] numpy.

  `batch` is rounded up to a multiple of the batch shard count; the last batch is padded.
  """
  batch = round_up(batch, batch_size_multiple(mesh))
  outs = []
  for start in range(0, len(x), batch):
    chunk = x[start:start + batch]
    outs.append(np.asarray(fn(shard_batch(pad_batch(chunk, batch), mesh)))[:len(chunk)])
  return np.concatenate(outs) if outs else np.zeros((0,), np.float32)


def host_shard(items: Sequence[Any]) -> list[Any]:
  """This process's share of `items` (every process_count-th, starting at process_index)."""
  return list(items[jax.process_index()::jax.process_count()])
