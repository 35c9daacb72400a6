"""The batches each training epoch draws: bucketed examples, or packed rows (``data.packing``).

Either way an epoch's batches are a function of ``(seed, epoch)``, every epoch has the same
number of steps, and ``start_batch`` resumes mid-epoch, so a checkpoint's (epoch, batch)
position means the same thing for both.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import jax
import numpy as np

from kobart_flax import batching, packing, sharding
from kobart_flax.config import DataConfig
from kobart_flax.tokenization import EncodedExample


class TrainBatches:
    """This host's slice of each global training batch, epoch by epoch."""

    def __init__(
        self,
        examples: Sequence[EncodedExample],
        data: DataConfig,
        *,
        batch_size: int,
        seed: int,
        process_index: int = 0,
        process_count: int = 1,
    ):
        self.examples = examples
        self.data = data
        self.batch_size = batch_size
        self.seed = seed
        self.hosts = dict(process_index=process_index, process_count=process_count)
        # Packed once for the whole run (see packing.pack_examples).
        self.rows = (
            packing.pack_examples(
                examples,
                seed=seed,
                source_length=data.packed_source_length,
                target_length=data.packed_target_length,
            )
            if data.packing
            else None
        )

    @property
    def steps_per_epoch(self) -> int:
        sequences = self.examples if self.rows is None else self.rows
        return batching.num_train_batches(len(sequences), self.batch_size)

    def describe(self) -> str:
        """One line for the log: what a batch holds, and how much of it is padding."""
        if self.rows is None:
            return f"{self.batch_size} examples per batch, bucketed by length"
        real_tokens = sum(len(e.input_ids) + len(e.labels) for e in self.examples)
        row_tokens = self.data.packed_source_length + self.data.packed_target_length
        return (
            f"{len(self.examples)} examples packed into {len(self.rows)} rows of "
            f"{self.data.packed_source_length} / {self.data.packed_target_length} tokens "
            f"({real_tokens / (len(self.rows) * row_tokens):.1%} real tokens), "
            f"{self.batch_size} rows per batch"
        )

    def epoch(
        self, epoch: int, start_batch: int, *, pad_token_id: int, decoder_start_token_id: int
    ) -> Iterator[dict[str, np.ndarray]]:
        """The model's token ids come last: the step count is needed before the model is."""
        ids = dict(pad_token_id=pad_token_id, decoder_start_token_id=decoder_start_token_id)
        if self.rows is None:
            return batching.train_batches(
                self.examples,
                batch_size=self.batch_size,
                seed=self.seed,
                epoch=epoch,
                source_buckets=self.data.source_buckets,
                target_buckets=self.data.target_buckets,
                start_batch=start_batch,
                **ids,
                **self.hosts,
            )
        return packing.packed_batches(
            self.examples,
            self.rows,
            rows_per_batch=self.batch_size,
            seed=self.seed,
            epoch=epoch,
            source_length=self.data.packed_source_length,
            target_length=self.data.packed_target_length,
            start_batch=start_batch,
            **ids,
            **self.hosts,
        )


def global_batches(
    local_batches: Iterable[dict[str, np.ndarray]], mesh: jax.sharding.Mesh
) -> Iterator[dict[str, jax.Array]]:
    """Each host's slices as global arrays sharded over the mesh's batch axes, on the devices.

    Run inside :func:`kobart_flax.batching.prefetch`, the host-to-device copies happen in its
    thread while the devices run earlier steps, so the training loop only dispatches steps.
    """
    for local_batch in local_batches:
        yield sharding.global_batch(local_batch, mesh)
