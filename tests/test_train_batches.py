"""train_batches.global_batches: device-ready global arrays, built where the iterator runs."""

import threading

import jax
import numpy as np

from kobart_flax import batching, sharding
from kobart_flax.train_batches import global_batches


def test_global_arrays_are_built_in_the_prefetch_thread(monkeypatch):
    mesh = sharding.make_data_mesh()
    built_in = []
    assemble = sharding.global_batch

    def recording(local_batch, mesh):
        built_in.append(threading.current_thread().name)
        return assemble(local_batch, mesh)

    monkeypatch.setattr(sharding, "global_batch", recording)
    # [4, 3] per batch: 2 rows on each of the 2 devices.
    local = [{"input_ids": np.arange(12, dtype=np.int32).reshape(4, 3) + 100 * i} for i in range(3)]

    batches = list(batching.prefetch(global_batches(iter(local), mesh), size=2))

    assert built_in == ["prefetch"] * 3, "none on the training thread"
    for batch, expected in zip(batches, local, strict=True):
        array = batch["input_ids"]
        assert isinstance(array, jax.Array)
        assert array.sharding.is_equivalent_to(sharding.batch_sharding(mesh), array.ndim)
        assert [shard.data.shape for shard in array.addressable_shards] == [(2, 3), (2, 3)]
        np.testing.assert_array_equal(np.asarray(array), expected["input_ids"])
