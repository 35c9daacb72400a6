"""Sequence packing: several examples per row, so training pays for few padding tokens.

News articles vary from a hundred to over a thousand tokens; padding every source to 512
(what the original project did) spends most of the compute on padding. Packing fills each
row of a fixed ``[rows, source_len]`` / ``[rows, target_len]`` shape with whole examples.
Segment ids (1, 2, ... per example, 0 for padding) keep packed examples from attending to
each other, and the model restarts positions at every segment, so each example's loss is
what it would be alone.

Rows are packed once per run from a seeded shuffle and their order is a function of
``(seed, epoch)``, like the unpacked batches; every host computes the same rows.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Sequence

import numpy as np

from kobart_flax.batching import num_train_batches, shift_right
from kobart_flax.tokenization import EncodedExample


def pack_rows(
    examples: Sequence[EncodedExample],
    order: np.ndarray,
    source_length: int,
    target_length: int,
    window: int = 4096,
) -> list[list[int]]:
    """Example indices per row, every example in exactly one row.

    ``order`` is cut into windows of ``window`` examples (bounded work, and the packing
    follows the caller's shuffle). Each window fills rows one at a time: the largest example
    left opens a row, then the best-scoring example that fits both the source and the
    target room left joins it, until none fits.
    """
    source_lengths = np.array([len(examples[i].input_ids) for i in order])
    target_lengths = np.array([len(examples[i].labels) for i in order])
    too_long = (source_lengths > source_length) | (target_lengths > target_length)
    if too_long.any():
        first = int(np.argmax(too_long))
        raise ValueError(
            f"example {order[first]} ({source_lengths[first]} source / {target_lengths[first]} "
            f"target tokens) does not fit a packed row of {source_length} / {target_length}; "
            "truncate first"
        )
    rows: list[list[int]] = []
    for start in range(0, len(order), window):
        sizes = RowSizes(
            source_lengths[start : start + window],
            source_length,
            target_lengths[start : start + window],
            target_length,
        )
        # No one rule packs every row shape best (on Dacon-like lengths each of these wins
        # at some row shape, by up to 2 points of efficiency): keep the fewest rows.
        window_rows = min((_fill_rows(sizes, *rule) for rule in FILL_RULES), key=len)
        rows.extend([int(order[start + position]) for position in row] for row in window_rows)
    return rows


@dataclasses.dataclass(frozen=True)
class RowSizes:
    """Example lengths of one packing window, and each as a fraction of its side of a row."""

    source_lengths: np.ndarray
    source_length: int
    target_lengths: np.ndarray
    target_length: int

    # Computed once per window: the fill rules read them at every pick.
    @functools.cached_property
    def source_fraction(self) -> np.ndarray:
        return self.source_lengths / self.source_length

    @functools.cached_property
    def target_fraction(self) -> np.ndarray:
        return self.target_lengths / self.target_length


def _larger_side(sizes: RowSizes) -> np.ndarray:
    return np.maximum(sizes.source_fraction, sizes.target_fraction)


def _both_sides(sizes: RowSizes) -> np.ndarray:
    return sizes.source_fraction + sizes.target_fraction


def _aligned_with_room(sizes: RowSizes, source_room: float, target_room: float) -> np.ndarray:
    """Dot product of size and room: mixes long articles (little summary per source
    token) with short ones (much), so a row fills on both sides."""
    return sizes.source_fraction * source_room + sizes.target_fraction * target_room


def _tightest_fit(sizes: RowSizes, source_room: float, target_room: float) -> np.ndarray:
    return -np.maximum(source_room - sizes.source_fraction, target_room - sizes.target_fraction)


def _largest(sizes: RowSizes, source_room: float, target_room: float) -> np.ndarray:
    return _both_sides(sizes)


# (the size by which the largest example left opens a row, the score by which the next
# example that fits joins it; room is a fraction of the row).
FILL_RULES = (
    (_larger_side, _aligned_with_room),
    (_larger_side, _tightest_fit),
    (_both_sides, _largest),
)


def _fill_rows(sizes: RowSizes, opening_size, joining_score) -> list[list[int]]:
    """Positions per row, filling one row at a time (a vector bin packing heuristic)."""
    opening = opening_size(sizes)
    left = np.ones(len(sizes.source_lengths), bool)
    rows = []
    while left.any():
        first = int(np.argmax(np.where(left, opening, -np.inf)))
        left[first] = False
        row = [first]
        source_room = sizes.source_length - sizes.source_lengths[first]
        target_room = sizes.target_length - sizes.target_lengths[first]
        while True:
            fits = left & (sizes.source_lengths <= source_room)
            fits &= sizes.target_lengths <= target_room
            if not fits.any():
                break
            score = joining_score(
                sizes, source_room / sizes.source_length, target_room / sizes.target_length
            )
            best = int(np.argmax(np.where(fits, score, -np.inf)))
            left[best] = False
            row.append(best)
            source_room -= sizes.source_lengths[best]
            target_room -= sizes.target_lengths[best]
        rows.append(row)
    return rows


def pack_examples(
    examples: Sequence[EncodedExample], *, seed: int, source_length: int, target_length: int
) -> list[list[int]]:
    """The run's packed rows: packed once from a seeded shuffle, reordered every epoch.

    Packing once keeps the number of steps per epoch fixed (the learning-rate schedule and
    the resume position count in steps); segments never see each other, so which examples
    share a row does not change what the model learns from each.
    """
    order = np.random.default_rng(seed).permutation(len(examples))
    return pack_rows(examples, order, source_length, target_length)


def collate_packed(
    examples: Sequence[EncodedExample],
    rows: Sequence[Sequence[int]],
    source_length: int,
    target_length: int,
    pad_token_id: int,
    decoder_start_token_id: int,
) -> dict[str, np.ndarray]:
    """Packed rows --> the batch arrays, with ``segment_ids`` / ``decoder_segment_ids``."""
    count = len(rows)
    batch = {
        "input_ids": np.full((count, source_length), pad_token_id, np.int32),
        "segment_ids": np.zeros((count, source_length), np.int32),
        "labels": np.full((count, target_length), pad_token_id, np.int32),
        "decoder_input_ids": np.full((count, target_length), pad_token_id, np.int32),
        "decoder_segment_ids": np.zeros((count, target_length), np.int32),
    }
    for row, members in enumerate(rows):
        source_at = target_at = 0
        for segment, index in enumerate(members, start=1):
            source, labels = examples[index].input_ids, examples[index].labels
            source_span = slice(source_at, source_at + len(source))
            target_span = slice(target_at, target_at + len(labels))
            batch["input_ids"][row, source_span] = source
            batch["segment_ids"][row, source_span] = segment
            batch["labels"][row, target_span] = labels
            # Each example's decoder input starts afresh from the start token.
            batch["decoder_input_ids"][row, target_span] = shift_right(
                labels[None, :], decoder_start_token_id, pad_token_id
            )[0]
            batch["decoder_segment_ids"][row, target_span] = segment
            source_at, target_at = source_span.stop, target_span.stop
    batch["attention_mask"] = (batch["segment_ids"] > 0).astype(np.int32)
    batch["decoder_attention_mask"] = (batch["decoder_segment_ids"] > 0).astype(np.int32)
    return batch


def packed_batches(
    examples: Sequence[EncodedExample],
    rows: Sequence[Sequence[int]],
    *,
    rows_per_batch: int,
    seed: int,
    epoch: int,
    source_length: int,
    target_length: int,
    pad_token_id: int,
    decoder_start_token_id: int,
    process_index: int = 0,
    process_count: int = 1,
    start_batch: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
    """This host's slice of each packed batch of one epoch.

    The rows' order depends only on ``(seed, epoch)``; ``start_batch`` resumes mid-epoch
    with the batches a full pass would give after its first ``start_batch``.
    """
    if rows_per_batch % process_count:
        raise ValueError(f"{rows_per_batch} rows per batch do not split over {process_count} hosts")
    batch_count = num_train_batches(len(rows), rows_per_batch)
    if not 0 <= start_batch <= batch_count:
        raise ValueError(f"start_batch must be in [0, {batch_count}], got {start_batch}")
    order = np.random.default_rng((seed, epoch)).permutation(len(rows))
    # [batches, rows per batch], the remainder dropped
    batch_rows = order[: batch_count * rows_per_batch].reshape(batch_count, rows_per_batch)
    local = rows_per_batch // process_count
    for members in batch_rows[start_batch:]:
        mine = members[process_index * local : (process_index + 1) * local]
        yield collate_packed(
            examples,
            [rows[i] for i in mine],
            source_length,
            target_length,
            pad_token_id,
            decoder_start_token_id,
        )


def padding_efficiency(batch: dict[str, np.ndarray]) -> float:
    """Real tokens / all tokens, sources and targets together."""
    real = batch["attention_mask"].sum() + batch["decoder_attention_mask"].sum()
    return float(real / (batch["attention_mask"].size + batch["decoder_attention_mask"].size))
