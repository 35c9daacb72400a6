"""Packed rows: same loss and gradients as unpacked batches, high padding efficiency."""

import jax
import numpy as np
import pytest
from tiny_models import tiny_kobart_config

from kobart_flax import packing, steps
from kobart_flax.batching import eval_batches, num_train_batches
from kobart_flax.pretrained import FlaxBartForConditionalGeneration
from kobart_flax.tokenization import EncodedExample

PAD, START, EOS = 3, 1, 1


def random_examples(count, seed=0, source=(5, 30), target=(3, 10)):
    rng = np.random.default_rng(seed)
    return [
        EncodedExample(
            input_ids=np.array([0, *rng.integers(4, 60, rng.integers(*source)), EOS], np.int32),
            labels=np.array([*rng.integers(4, 60, rng.integers(*target)), EOS], np.int32),
        )
        for _ in range(count)
    ]


@pytest.fixture(scope="module")
def model():
    config = tiny_kobart_config(60)
    assert (config.pad_token_id, config.decoder_start_token_id) == (PAD, START)
    return FlaxBartForConditionalGeneration(config, seed=1)


def loss_and_grads(model, batch):
    def loss_sum(params):
        return steps.summed_loss(model.module.apply, params, batch, 0.0, None)

    (total, tokens), grads = jax.value_and_grad(loss_sum, has_aux=True)(model.params)
    return float(total), float(tokens), grads


def test_packed_and_unpacked_batches_give_the_same_loss_and_gradients(model):
    examples = random_examples(12)
    rows = packing.pack_rows(examples, np.arange(12), source_length=64, target_length=24)
    assert len(rows) < len(examples)  # several examples share rows
    packed = packing.collate_packed(examples, rows, 64, 24, PAD, START)
    unpacked = next(
        eval_batches(
            examples,
            batch_size=12,
            source_buckets=(32,),
            target_buckets=(16,),
            pad_token_id=PAD,
            decoder_start_token_id=START,
        )
    )
    unpacked.pop("example_index")

    packed_loss, packed_tokens, packed_grads = loss_and_grads(model, packed)
    loss, tokens, grads = loss_and_grads(model, unpacked)
    assert packed_tokens == tokens == sum(len(e.labels) for e in examples)
    assert packed_loss == pytest.approx(loss, rel=1e-5)
    for a, b in zip(jax.tree.leaves(packed_grads), jax.tree.leaves(grads), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


def test_rows_hold_every_example_once_in_order_of_segments():
    examples = random_examples(40, seed=2)
    rows = packing.pack_examples(examples, seed=0, source_length=64, target_length=24)
    assert sorted(i for row in rows for i in row) == list(range(40))
    batch = packing.collate_packed(examples, rows, 64, 24, PAD, START)
    for row, members in enumerate(rows):
        sources = batch["input_ids"][row][batch["segment_ids"][row] > 0]
        expected = np.concatenate([examples[i].input_ids for i in members])
        np.testing.assert_array_equal(sources, expected)
        # Each segment's decoder input begins with the start token.
        segments = batch["decoder_segment_ids"][row]
        starts = np.flatnonzero(np.diff(np.concatenate([[0], segments])) > 0)
        assert (batch["decoder_input_ids"][row][starts] == START).all()
    assert packing.pack_examples(examples, seed=0, source_length=64, target_length=24) == rows
    assert packing.pack_examples(examples, seed=1, source_length=64, target_length=24) != rows


def packed_options(**extra):
    return dict(
        rows_per_batch=4,
        seed=0,
        source_length=64,
        target_length=24,
        pad_token_id=PAD,
        decoder_start_token_id=START,
        **extra,
    )


def test_epochs_reorder_the_same_rows():
    examples = random_examples(60, seed=3)
    rows = packing.pack_examples(examples, seed=0, source_length=64, target_length=24)
    epochs = [
        list(packing.packed_batches(examples, rows, **packed_options(epoch=epoch)))
        for epoch in (0, 1)
    ]
    assert len(epochs[0]) == len(epochs[1]) == num_train_batches(len(rows), 4) > 1
    first, second = (np.concatenate([b["input_ids"] for b in batches]) for batches in epochs)
    assert not np.array_equal(first, second)
    # Rows of the one packing, in another order (each epoch drops a different remainder).
    packed_rows = packing.collate_packed(examples, rows, 64, 24, PAD, START)["input_ids"]
    assert {bytes(row) for row in np.concatenate([first, second])} <= set(map(bytes, packed_rows))


def test_host_slices_concatenate_to_the_global_batch():
    examples = random_examples(60, seed=3)
    rows = packing.pack_examples(examples, seed=0, source_length=64, target_length=24)
    whole = list(packing.packed_batches(examples, rows, **packed_options(epoch=0)))
    halves = [
        list(
            packing.packed_batches(
                examples, rows, **packed_options(epoch=0, process_index=i, process_count=2)
            )
        )
        for i in range(2)
    ]
    for batch, first, second in zip(whole, *halves, strict=True):
        for name in batch:
            np.testing.assert_array_equal(batch[name], np.concatenate([first[name], second[name]]))
    resumed = list(packing.packed_batches(examples, rows, **packed_options(epoch=0, start_batch=2)))
    assert len(resumed) == len(whole) - 2
    for batch, expected in zip(resumed, whole[2:], strict=True):
        np.testing.assert_array_equal(batch["input_ids"], expected["input_ids"])


def news_like_examples(count, seed=0):
    """Dacon-like lengths: articles 200-1000 tokens cut at 512, summaries 20-80 tokens."""
    rng = np.random.default_rng(seed)
    return [
        EncodedExample(
            input_ids=np.ones(min(int(rng.integers(200, 1000)), 512), np.int32),
            labels=np.ones(int(rng.integers(20, 80)), np.int32),
        )
        for _ in range(count)
    ]


@pytest.mark.parametrize(
    ("source_length", "target_length", "at_least"),
    [
        # Most rows hold two articles; a third rarely fits both the source and summary room.
        (1024, 128, 0.93),
        # Longer rows average out the mix of article and summary lengths: the 95%.
        (2048, 256, 0.95),
    ],
)
def test_news_like_lengths_pack_far_tighter_than_padding_to_512(
    source_length, target_length, at_least
):
    examples = news_like_examples(2000)
    rows = packing.pack_examples(
        examples, seed=0, source_length=source_length, target_length=target_length
    )
    batch = packing.collate_packed(examples, rows, source_length, target_length, PAD, START)
    assert packing.padding_efficiency(batch) >= at_least
    padded_to_512 = sum(len(e.input_ids) + len(e.labels) for e in examples) / (2000 * (512 + 128))
    assert padded_to_512 < 0.8


def test_an_example_longer_than_a_row_is_an_error():
    examples = random_examples(1, source=(70, 71))
    with pytest.raises(ValueError, match="does not fit a packed row"):
        packing.pack_rows(examples, np.arange(1), source_length=64, target_length=24)
