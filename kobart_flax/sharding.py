"""Device mesh and shardings.

A 1-D ``data`` mesh: every device holds a full copy of the train state and a slice of
each batch. The axis is named so that FSDP and tensor axes can join it without touching
the train step.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_data_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    # Auto axes: shardings are given at jit boundaries and XLA (GSPMD) places the rest.
    return jax.make_mesh((len(devices),), (DATA_AXIS,), (AxisType.Auto,), devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over the data axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assemble each host's rows of a batch into global arrays sharded over ``data``.

    ``local_batch`` holds this process's contiguous slice of the global batch (what
    :func:`kobart_flax.batching.train_batches` yields for ``process_index``).
    """
    sharding = batch_sharding(mesh)
    return {
        name: jax.make_array_from_process_local_data(sharding, array)
        for name, array in local_batch.items()
    }
