"""Data parallelism of the evaluation job: a 1-D mesh over this host's devices.

Every host evaluates its own share of the clips (`host_shard`), so nothing crosses hosts but the
final barrier; within a host, each batch is split over `jax.local_devices()` along axis 0 and
the weights are replicated (`NamedSharding` over a mesh with the single axis "data"). With one
CPU device this is a no-op.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence, TypeVar

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "data"
T = TypeVar("T")


def local_mesh() -> Mesh:
  """1-D mesh ("data",) over `jax.local_devices()`."""
  return Mesh(np.array(jax.local_devices()), (AXIS,))


def round_up(n: int, multiple: int) -> int:
  """Smallest multiple of `multiple` that is >= n (and >= multiple)."""
  return max(multiple, int(math.ceil(n / multiple)) * multiple)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Puts every leaf of `tree` on all devices of `mesh`."""
  return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_batch(x: np.ndarray, mesh: Mesh) -> jax.Array:
  """Splits axis 0 of `x` over the mesh (its length must be a multiple of the device count)."""
  return jax.device_put(x, NamedSharding(mesh, P(AXIS)))


def pad_to(x: np.ndarray, n: int) -> np.ndarray:
  """Pads axis 0 of `x` to length n by repeating its last row (a fixed shape: one compile)."""
  if len(x) == n:
    return x
  return np.concatenate([x, np.repeat(x[-1:], n - len(x), axis=0)])


def batched_apply(fn: Callable[[jax.Array], jax.Array], x: np.ndarray, batch: int,
                  mesh: Mesh) -> np.ndarray:
  """`fn` over `x` [N, ...] in fixed-size batches sharded over `mesh`; returns [N, ...] numpy.

  `batch` is rounded up to a multiple of the device count; the last batch is padded.
  """
  batch = round_up(batch, mesh.size)
  outs = []
  for start in range(0, len(x), batch):
    chunk = x[start:start + batch]
    y = fn(shard_batch(pad_to(chunk, batch), mesh))
    outs.append(np.asarray(y)[:len(chunk)])
  return np.concatenate(outs) if outs else np.zeros((0,), np.float32)


def host_shard(items: Sequence[T]) -> list[T]:
  """This process's share of `items` (every process_count-th, starting at process_index)."""
  return list(items[jax.process_index()::jax.process_count()])
