"""Padded numpy batches for training and evaluation, identical in shape on every host.

Every batch is padded to bucket lengths (the smallest source/target bucket covering its longest
row), so a jitted step compiles at most ``len(source_buckets) * len(target_buckets)`` times.
``batch_size`` is always the global batch: each of ``process_count`` hosts yields its own
contiguous slice of rows, while the buckets are picked from the whole global batch so all hosts
agree on shapes and ``jax.make_array_from_process_local_data`` can assemble them.

A batch is a dict of int32 arrays:

- ``input_ids``, ``attention_mask``: [batch, source_bucket]
- ``labels``: [batch, target_bucket], ``pad_token_id`` after the summary
- ``decoder_input_ids``: ``labels`` shifted right behind ``decoder_start_token_id``
- ``decoder_attention_mask``: 1 where ``labels`` holds a real token; it doubles as the loss mask
- ``example_index`` (evaluation only): [batch], position in ``examples``, -1 for padding rows
"""

import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from kobart_flax.tokenization import EncodedExample

# Training batches are made length-homogeneous inside windows of this many batches: large
# enough that batches need little padding, small enough that the (seeded) shuffle still
# decides which examples meet in a batch.
SORT_WINDOW_BATCHES = 64

# The Hugging Face label value for "no loss here"; ``shift_right`` maps it to padding.
IGNORE_INDEX = -100

# Marks a padding row of the last evaluation batch, in place of an example index.
_DUMMY_ROW = -1


def pick_bucket(length: int, buckets: Sequence[int]) -> int:
    """Returns the smallest bucket >= ``length``; callers must truncate to the largest first."""
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    fitting = [bucket for bucket in buckets if bucket >= length]
    if not fitting:
        raise ValueError(
            f"length {length} exceeds the largest bucket {max(buckets, default=None)}; "
            "truncate to the largest bucket (max_source_length / max_target_length) first"
        )
    return min(fitting)


def shift_right(labels: np.ndarray, decoder_start_token_id: int, pad_token_id: int) -> np.ndarray:
    """[batch, T] labels -> [batch, T] decoder inputs: ``decoder_start`` then ``labels[:, :-1]``.

    Padding that is already ``pad_token_id`` stays padding. Labels following the Hugging Face
    convention of -100 at ignored positions get ``pad_token_id`` there instead, as in
    transformers' ``shift_tokens_right``, since -100 is not a valid embedding index.
    """
    decoder_input_ids = np.empty_like(labels)
    decoder_input_ids[:, 0] = decoder_start_token_id
    decoder_input_ids[:, 1:] = labels[:, :-1]
    return np.where(decoder_input_ids == IGNORE_INDEX, pad_token_id, decoder_input_ids)


def num_train_batches(num_examples: int, batch_size: int) -> int:
    """Full global batches per epoch; the partial remainder is dropped so every host agrees."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return num_examples // batch_size


def train_batches(
    examples: Sequence[EncodedExample],
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    source_buckets: Sequence[int],
    target_buckets: Sequence[int],
    pad_token_id: int,
    decoder_start_token_id: int,
    process_index: int = 0,
    process_count: int = 1,
    start_batch: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
    """Yields this host's slice of each training batch of one epoch.

    The order depends only on ``(seed, epoch)``: a seeded permutation of the examples, sorted by
    source length within windows of ``SORT_WINDOW_BATCHES`` batches, cut into batches whose
    order is shuffled again. ``start_batch`` resumes mid-epoch: the batches equal those of a
    full pass minus the first ``start_batch``, and the skipped ones are never padded.

    Arguments are checked when this is called, not when the first batch is drawn.
    """
    local_rows = _local_rows(batch_size, process_index, process_count)
    lengths = _bucketed_lengths(examples, source_buckets, target_buckets)
    batch_count = num_train_batches(len(examples), batch_size)
    if not 0 <= start_batch <= batch_count:
        raise ValueError(f"start_batch must be in [0, {batch_count}], got {start_batch}")

    rng = np.random.default_rng((seed, epoch))
    # Drop the remainder before sorting, so the dropped examples are random, not the longest.
    kept = rng.permutation(len(examples))[: batch_count * batch_size]
    window = SORT_WINDOW_BATCHES * batch_size
    for start in range(0, len(kept), window):
        chunk = kept[start : start + window]
        kept[start : start + window] = chunk[np.argsort(lengths.source[chunk], kind="stable")]
    batch_rows = kept.reshape(batch_count, batch_size)  # [batches, global batch]
    batch_rows = batch_rows[rng.permutation(batch_count)][start_batch:]
    padded = _padded_batches(
        examples, batch_rows, local_rows, lengths, pad_token_id, decoder_start_token_id
    )
    return (batch for _, batch in padded)


def eval_batches(
    examples: Sequence[EncodedExample],
    *,
    batch_size: int,
    source_buckets: Sequence[int],
    target_buckets: Sequence[int],
    pad_token_id: int,
    decoder_start_token_id: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """Yields this host's slice of batches covering every example exactly once across hosts.

    Examples go longest first (so an out-of-memory shows at once, and batches pad little). The
    last global batch is filled with dummy rows whose attention masks are all zero, so they
    carry no loss weight, and whose ``example_index`` is -1. All hosts yield the same number of
    batches with the same shapes.
    """
    local_rows = _local_rows(batch_size, process_index, process_count)
    lengths = _bucketed_lengths(examples, source_buckets, target_buckets)
    batch_count = -(-len(examples) // batch_size)
    batch_rows = np.full(batch_count * batch_size, _DUMMY_ROW, dtype=np.int64)
    batch_rows[: len(examples)] = np.argsort(-lengths.source, kind="stable")
    batch_rows = batch_rows.reshape(batch_count, batch_size)  # [batches, global batch]
    padded = _padded_batches(
        examples, batch_rows, local_rows, lengths, pad_token_id, decoder_start_token_id
    )
    return (batch | {"example_index": rows.astype(np.int32)} for rows, batch in padded)


def prefetch(iterator: Iterator, size: int = 2) -> Iterator:
    """Runs ``iterator`` in a background thread, keeping up to ``size`` items ready.

    An exception raised by ``iterator`` is re-raised in the consumer after the items that came
    before it. When the consumer stops early (``close()``, or garbage collection once iteration
    has begun), the producer stops at its next item and closes ``iterator``. The thread is a
    daemon, so it can never hold up the exit of the program.
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    ready: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()
    thread = threading.Thread(
        target=_produce, args=(iterator, ready, stop), name="prefetch", daemon=True
    )
    thread.start()
    return _consume(ready, stop)


class _ProducerFailed:
    """Carries the producer's exception across the queue."""

    def __init__(self, error: BaseException):
        self.error = error


_END = object()


def _produce(iterator: Iterator, ready: queue.Queue, stop: threading.Event) -> None:
    def put(item: object) -> bool:
        # A bounded wait, so a consumer that went away (stop set) cannot block us forever.
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    try:
        for item in iterator:
            if not put(item):
                break
        else:
            put(_END)
    except BaseException as error:  # Any failure must reach the consumer, or it waits forever.
        put(_ProducerFailed(error))
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


def _consume(ready: queue.Queue, stop: threading.Event) -> Iterator:
    try:
        while True:
            item = ready.get()
            if item is _END:
                return
            if isinstance(item, _ProducerFailed):
                raise item.error
            yield item
    finally:
        stop.set()


def _local_rows(batch_size: int, process_index: int, process_count: int) -> slice:
    """This host's contiguous rows [i*B/P, (i+1)*B/P) of every global batch."""
    if process_count < 1:
        raise ValueError(f"process_count must be >= 1, got {process_count}")
    if batch_size <= 0 or batch_size % process_count:
        raise ValueError(
            f"batch_size {batch_size} must be a positive multiple of process_count {process_count}"
        )
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index must be in [0, {process_count}), got {process_index}")
    per_host = batch_size // process_count
    return slice(process_index * per_host, (process_index + 1) * per_host)


@dataclass(frozen=True)
class _BucketedLengths:
    """Every example's lengths, with the buckets they are padded to."""

    source: np.ndarray  # int64 [examples]
    target: np.ndarray  # int64 [examples]
    source_buckets: Sequence[int]
    target_buckets: Sequence[int]


def _bucketed_lengths(
    examples: Sequence[EncodedExample],
    source_buckets: Sequence[int],
    target_buckets: Sequence[int],
) -> _BucketedLengths:
    """Source and target lengths, checked against the buckets before any batch is built."""
    source = np.array([len(example.input_ids) for example in examples], dtype=np.int64)
    target = np.array([len(example.labels) for example in examples], dtype=np.int64)
    if len(examples):
        pick_bucket(int(source.max()), source_buckets)
        pick_bucket(int(target.max()), target_buckets)
    return _BucketedLengths(source, target, source_buckets, target_buckets)


def _padded_batches(
    examples: Sequence[EncodedExample],
    batch_rows: np.ndarray,
    local_rows: slice,
    lengths: _BucketedLengths,
    pad_token_id: int,
    decoder_start_token_id: int,
) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """For each row of ``batch_rows`` [batches, global batch], this host's rows and batch.

    Buckets come from the whole global batch, so every host pads to the same shapes.
    """
    for global_rows in batch_rows:
        real = global_rows[global_rows != _DUMMY_ROW]
        source_len = pick_bucket(int(lengths.source[real].max()), lengths.source_buckets)
        target_len = pick_bucket(int(lengths.target[real].max()), lengths.target_buckets)
        rows = global_rows[local_rows]
        batch = _collate(
            [None if index == _DUMMY_ROW else examples[index] for index in rows],
            source_len,
            target_len,
            pad_token_id,
            decoder_start_token_id,
        )
        yield rows, batch


def _collate(
    rows: Sequence[EncodedExample | None],
    source_len: int,
    target_len: int,
    pad_token_id: int,
    decoder_start_token_id: int,
) -> dict[str, np.ndarray]:
    """Pads rows into one batch; a ``None`` row becomes an all-padding, fully masked dummy."""
    input_ids = np.full((len(rows), source_len), pad_token_id, dtype=np.int32)
    attention_mask = np.zeros((len(rows), source_len), dtype=np.int32)
    labels = np.full((len(rows), target_len), pad_token_id, dtype=np.int32)
    decoder_attention_mask = np.zeros((len(rows), target_len), dtype=np.int32)
    for row, example in enumerate(rows):
        if example is None:
            continue
        input_ids[row, : len(example.input_ids)] = example.input_ids
        attention_mask[row, : len(example.input_ids)] = 1
        labels[row, : len(example.labels)] = example.labels
        decoder_attention_mask[row, : len(example.labels)] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "decoder_input_ids": shift_right(labels, decoder_start_token_id, pad_token_id),
        "decoder_attention_mask": decoder_attention_mask,
        "labels": labels,
    }
