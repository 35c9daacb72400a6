"""Batching: bucket shapes, deterministic order, resume, host slices, eval coverage, prefetch."""

import threading

import numpy as np
import pytest

from kobart_flax.batching import (
    eval_batches,
    num_train_batches,
    pick_bucket,
    prefetch,
    shift_right,
    train_batches,
)
from kobart_flax.tokenization import EncodedExample

PAD, START = 3, 1
SOURCE_BUCKETS, TARGET_BUCKETS = (8, 16, 32), (4, 8, 16)
KEYS = {"input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask", "labels"}


def make_examples(count: int, seed: int = 0) -> list[EncodedExample]:
    """Examples of varied lengths whose tokens encode their index, so rows can be traced."""
    rng = np.random.default_rng(seed)
    examples = []
    for index in range(count):
        source_len, target_len = rng.integers(3, 33), rng.integers(2, 17)
        examples.append(
            EncodedExample(
                input_ids=np.full(source_len, 1000 + index, dtype=np.int32),
                labels=np.full(target_len, 1000 + index, dtype=np.int32),
            )
        )
    return examples


def row_indices(batch: dict[str, np.ndarray]) -> list[int]:
    """Which example each row holds (-1 for a dummy row), read from the first token."""
    return [int(first) - 1000 if first != PAD else -1 for first in batch["input_ids"][:, 0]]


# The batching options training and evaluation share; a test overrides what it is about.
SHAPES = dict(
    batch_size=8,
    source_buckets=SOURCE_BUCKETS,
    target_buckets=TARGET_BUCKETS,
    pad_token_id=PAD,
    decoder_start_token_id=START,
)


def train(examples, **overrides):
    return list(train_batches(examples, **{**SHAPES, "seed": 0, "epoch": 0, **overrides}))


def evaluate(examples, **overrides):
    return list(eval_batches(examples, **{**SHAPES, **overrides}))


def assert_same_batches(left, right):
    assert len(left) == len(right)
    for a, b in zip(left, right, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_pick_bucket_takes_the_smallest_fitting_bucket():
    assert pick_bucket(1, (8, 16)) == 8
    assert pick_bucket(8, (16, 8)) == 8
    assert pick_bucket(9, (8, 16)) == 16
    with pytest.raises(ValueError, match="exceeds the largest bucket 16"):
        pick_bucket(17, (8, 16))


def test_shift_right_prepends_the_start_token():
    labels = np.array([[5, 6, 7, 1], [8, 1, PAD, PAD]], dtype=np.int32)
    np.testing.assert_array_equal(
        shift_right(labels, START, PAD), [[START, 5, 6, 7], [START, 8, 1, PAD]]
    )
    # Hugging Face style ignored positions (-100) become padding, never an embedding index.
    np.testing.assert_array_equal(
        shift_right(np.array([[5, 1, -100]]), START, PAD), [[START, 5, 1]]
    )
    np.testing.assert_array_equal(
        shift_right(np.array([[5, 6, -100, -100]]), START, PAD), [[START, 5, 6, PAD]]
    )


def test_batch_contents_masks_and_bucket_shapes():
    examples = make_examples(50)
    for batch in train(examples):
        assert batch.keys() == KEYS
        assert all(array.dtype == np.int32 for array in batch.values())
        rows = row_indices(batch)
        source_lengths = [len(examples[i].input_ids) for i in rows]
        target_lengths = [len(examples[i].labels) for i in rows]
        assert batch["input_ids"].shape == (8, pick_bucket(max(source_lengths), SOURCE_BUCKETS))
        assert batch["labels"].shape == (8, pick_bucket(max(target_lengths), TARGET_BUCKETS))
        np.testing.assert_array_equal(batch["attention_mask"].sum(1), source_lengths)
        np.testing.assert_array_equal(batch["decoder_attention_mask"].sum(1), target_lengths)
        # Padding is pad_token_id exactly where the masks are zero.
        assert np.all((batch["input_ids"] == PAD) == (batch["attention_mask"] == 0))
        assert np.all((batch["labels"] == PAD) == (batch["decoder_attention_mask"] == 0))
        np.testing.assert_array_equal(
            batch["decoder_input_ids"], shift_right(batch["labels"], START, PAD)
        )


def test_train_epoch_has_full_batches_of_distinct_examples():
    examples = make_examples(70)
    batches = train(examples)
    assert len(batches) == num_train_batches(70, 8) == 8
    seen = [index for batch in batches for index in row_indices(batch)]
    assert len(seen) == 64 == len(set(seen))


def test_train_order_depends_only_on_seed_and_epoch():
    examples = make_examples(100)
    assert_same_batches(train(examples, seed=3, epoch=2), train(examples, seed=3, epoch=2))
    orders = [
        [row_indices(b) for b in train(examples, seed=seed, epoch=epoch)]
        for seed, epoch in [(3, 2), (3, 5), (4, 2)]
    ]
    assert orders[0] != orders[1]  # Another epoch reshuffles.
    assert orders[0] != orders[2]  # Another seed too.


def test_batches_are_length_homogeneous():
    examples = make_examples(512)
    fine_buckets = tuple(range(2, 34, 2))
    batches = train(examples, batch_size=16, source_buckets=fine_buckets)
    padded = sum(batch["input_ids"].size for batch in batches)
    real = sum(int(batch["attention_mask"].sum()) for batch in batches)
    # Random batches of lengths 3..32 would pad nearly every row to about 31 (45% padding);
    # sorted within a window, the rows of a batch differ by a token or two.
    assert real / padded > 0.9


def test_start_batch_resumes_with_the_tail_of_the_epoch():
    examples = make_examples(100)
    full = train(examples, seed=7, epoch=1)
    assert_same_batches(train(examples, seed=7, epoch=1, start_batch=5), full[5:])
    assert train(examples, seed=7, epoch=1, start_batch=len(full)) == []
    with pytest.raises(ValueError, match="start_batch"):
        train(examples, start_batch=len(full) + 1)


def test_host_slices_concatenate_to_the_global_batch():
    examples = make_examples(100)
    global_batches = train(examples, seed=1, epoch=0)
    hosts = [train(examples, seed=1, epoch=0, process_index=i, process_count=4) for i in range(4)]
    for step, global_batch in enumerate(global_batches):
        slices = [host[step] for host in hosts]
        for key, global_array in global_batch.items():
            # Identical shapes on every host, even where a slice alone would fit a smaller bucket.
            assert {s[key].shape for s in slices} == {(2, global_array.shape[1])}
            np.testing.assert_array_equal(np.concatenate([s[key] for s in slices]), global_array)


def test_batch_size_must_divide_among_hosts():
    with pytest.raises(ValueError, match="multiple of process_count 3"):
        train(make_examples(20), process_count=3)


def test_too_long_examples_fail_when_the_epoch_is_requested():
    long = EncodedExample(np.ones(40, np.int32), np.ones(3, np.int32))
    with pytest.raises(ValueError, match="exceeds the largest bucket 32"):
        train_batches(
            [long], batch_size=1, seed=0, epoch=0, source_buckets=SOURCE_BUCKETS,
            target_buckets=TARGET_BUCKETS, pad_token_id=PAD, decoder_start_token_id=START,
        )  # fmt: skip


@pytest.mark.parametrize("process_count", [1, 4])
def test_eval_covers_every_example_once_across_hosts(process_count):
    examples = make_examples(37)
    hosts = [
        evaluate(examples, process_index=i, process_count=process_count)
        for i in range(process_count)
    ]
    assert len({len(batches) for batches in hosts}) == 1  # Every host yields as many batches.
    assert len(hosts[0]) == 5  # ceil(37 / 8)
    seen = []
    for step in range(len(hosts[0])):
        shapes = {key: {host[step][key].shape for host in hosts} for key in hosts[0][step]}
        assert all(len(shape_set) == 1 for shape_set in shapes.values())
        for host in hosts:
            batch = host[step]
            assert row_indices(batch) == batch["example_index"].tolist()
            seen.extend(batch["example_index"].tolist())
    assert sorted(index for index in seen if index >= 0) == list(range(37))
    assert seen.count(-1) == 5 * 8 - 37


def test_eval_dummy_rows_carry_no_weight():
    batches = evaluate(make_examples(13))
    last = batches[-1]
    dummy = last["example_index"] == -1
    assert dummy.sum() == 3
    assert last["attention_mask"][dummy].sum() == 0
    assert last["decoder_attention_mask"][dummy].sum() == 0
    assert np.all(last["input_ids"][dummy] == PAD) and np.all(last["labels"][dummy] == PAD)
    # The real rows of the last batch are untouched.
    assert np.all(last["attention_mask"][~dummy].sum(1) > 0)


def test_eval_batches_go_longest_first():
    batches = evaluate(make_examples(64))
    longest = [int(batch["attention_mask"].sum(1).max()) for batch in batches]
    assert longest == sorted(longest, reverse=True)


def test_prefetch_yields_the_same_sequence():
    assert list(prefetch(iter(range(100)), size=3)) == list(range(100))


def test_prefetch_reraises_the_producer_error_in_the_consumer():
    def failing():
        yield 1
        yield 2
        raise RuntimeError("disk on fire")

    consumer = prefetch(failing())
    assert next(consumer) == 1
    assert next(consumer) == 2
    with pytest.raises(RuntimeError, match="disk on fire"):
        next(consumer)


def test_prefetch_stops_the_producer_when_the_consumer_stops_early():
    closed = threading.Event()

    def endless():
        try:
            count = 0
            while True:
                yield count
                count += 1
        finally:
            closed.set()

    consumer = prefetch(endless(), size=2)
    assert [next(consumer) for _ in range(5)] == [0, 1, 2, 3, 4]
    consumer.close()
    assert closed.wait(timeout=5), "the producer kept running after the consumer stopped"
