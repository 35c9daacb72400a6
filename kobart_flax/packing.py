"""Sequence packing: several examples per row, so training pays for few padding tokens.

News articles vary from a hundred to over a thousand tokens; padding every source to 512
(what the original project did) spends most of the compute on padding. Packing fills each
row of a fixed ``[rows, source_len]`` / ``[rows, target_len]`` shape with whole examples.
Segment ids (1, 2, ... per example, 0 for padding) keep packed examples from attending to
each other, and the model restarts positions at every segment, so each example's loss is
what it would be alone.

The packing order is a deterministic function of ``(seed, epoch)``, like the unpacked
batches, and every host computes the same rows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from kobart_flax.batching import shift_right
from kobart_flax.tokenization import EncodedExample


def pack_rows(
    examples: Sequence[EncodedExample],
    order: np.ndarray,
    source_length: int,
    target_length: int,
    window: int = 1024,
) -> list[list[int]]:
    """First-fit decreasing into rows; returns example indices per row.

    ``order`` is cut into windows of ``window`` examples; within a window the longest
    sources go first, each into the first row with room for both its source and its
    target. (First-fit decreasing wastes little; windows keep it fast and keep the
    epoch's shuffle.)
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
        # Largest first by the scarcer of the two resources (a 2-D bin packing heuristic).
        size = np.maximum(source_lengths / source_length, target_lengths / target_length)
        chunk = np.argsort(-size[start : start + window], kind="stable") + start
        source_room = np.zeros(len(chunk), np.int64)
        target_room = np.zeros(len(chunk), np.int64)
        chunk_rows: list[list[int]] = []
        for position in chunk:
            fits = (source_room[: len(chunk_rows)] >= source_lengths[position]) & (
                target_room[: len(chunk_rows)] >= target_lengths[position]
            )
            # Best fit: the row this example fills most tightly.
            leftover = np.maximum(
                (source_room[: len(chunk_rows)] - source_lengths[position]) / source_length,
                (target_room[: len(chunk_rows)] - target_lengths[position]) / target_length,
            )
            row = (
                int(np.argmin(np.where(fits, leftover, np.inf))) if fits.any() else len(chunk_rows)
            )
            if row == len(chunk_rows):
                chunk_rows.append([])
                source_room[row], target_room[row] = source_length, target_length
            chunk_rows[row].append(int(order[position]))
            source_room[row] -= source_lengths[position]
            target_room[row] -= target_lengths[position]
        rows.extend(chunk_rows)
    return rows


def epoch_rows(
    examples: Sequence[EncodedExample],
    *,
    seed: int,
    epoch: int,
    source_length: int,
    target_length: int,
) -> list[list[int]]:
    """The packed rows of one epoch, in training order."""
    rng = np.random.default_rng((seed, epoch))
    rows = pack_rows(examples, rng.permutation(len(examples)), source_length, target_length)
    return [rows[i] for i in rng.permutation(len(rows))]


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
    """This host's slice of each packed batch of one epoch (a partial last batch is dropped)."""
    if rows_per_batch % process_count:
        raise ValueError(f"{rows_per_batch} rows per batch do not split over {process_count} hosts")
    rows = epoch_rows(
        examples, seed=seed, epoch=epoch, source_length=source_length, target_length=target_length
    )
    local = rows_per_batch // process_count
    for start in range(
        start_batch * rows_per_batch, len(rows) - rows_per_batch + 1, rows_per_batch
    ):
        mine = rows[start + process_index * local : start + (process_index + 1) * local]
        yield collate_packed(
            examples, mine, source_length, target_length, pad_token_id, decoder_start_token_id
        )


def padding_efficiency(batch: dict[str, np.ndarray]) -> float:
    """Real tokens / all tokens, sources and targets together."""
    real = batch["attention_mask"].sum() + batch["decoder_attention_mask"].sum()
    return float(real / (batch["attention_mask"].size + batch["decoder_attention_mask"].size))
