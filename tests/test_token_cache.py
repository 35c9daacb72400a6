"""The tokenization cache: hits skip the tokenizer, any change of input misses, writers race."""

import dataclasses
import multiprocessing

import numpy as np
import pytest
from timeouts import scaled_timeout
from tiny_models import SAMPLE, SAMPLE_TOKENIZER

from kobart_flax import token_cache
from kobart_flax.data_io import read_examples
from kobart_flax.tokenization import encode_examples, load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(str(SAMPLE_TOKENIZER))


@pytest.fixture(scope="module")
def examples():
    return read_examples(str(SAMPLE / "test.tsv"))[:40]


class CountingEncoder:
    def __init__(self):
        self.calls = 0

    def __call__(self, *args):
        self.calls += 1
        return encode_examples(*args)


def assert_same(actual, expected):
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected, strict=True):
        np.testing.assert_array_equal(got.input_ids, want.input_ids)
        np.testing.assert_array_equal(got.labels, want.labels)
        assert got.input_ids.dtype == want.input_ids.dtype == np.int32


def test_a_second_start_reads_the_cache_instead_of_tokenizing(tmp_path, tokenizer, examples):
    encoder = CountingEncoder()
    first = token_cache.cached_encode(examples, tokenizer, 128, 32, str(tmp_path), encoder)
    second = token_cache.cached_encode(examples, tokenizer, 128, 32, str(tmp_path), encoder)

    assert encoder.calls == 1
    assert_same(second, encode_examples(tokenizer, examples, 128, 32))
    assert_same(first, second)
    assert len(list(tmp_path.glob("encoded-*.npz"))) == 1
    assert not list(tmp_path.glob(".*tmp"))


def test_any_change_of_input_misses(tmp_path, tokenizer, examples):
    encoder = CountingEncoder()
    token_cache.cached_encode(examples, tokenizer, 128, 32, str(tmp_path), encoder)
    edited = list(examples)
    edited[7] = dataclasses.replace(edited[7], summary=edited[7].summary + " 끝")
    other_tokenizer = load_tokenizer(str(SAMPLE_TOKENIZER))
    other_tokenizer.backend_tokenizer.add_tokens(["새토큰"])

    for args in (
        (edited, tokenizer, 128, 32),  # one row
        (examples, tokenizer, 64, 32),  # a max length
        (examples, tokenizer, 128, 16),
        (examples, other_tokenizer, 128, 32),  # the tokenizer
        (examples[:39], tokenizer, 128, 32),  # a row fewer
    ):
        calls = encoder.calls
        result = token_cache.cached_encode(*args, str(tmp_path), encoder)
        assert encoder.calls == calls + 1
        rows, its_tokenizer, *lengths = args
        assert_same(result, encode_examples(its_tokenizer, rows, *lengths))
    assert len(list(tmp_path.glob("encoded-*.npz"))) == 6


def _encode_into(cache_dir: str, barrier) -> None:
    tokenizer = load_tokenizer(str(SAMPLE_TOKENIZER))
    examples = read_examples(str(SAMPLE / "train.tsv"))
    barrier.wait()  # start together
    token_cache.cached_encode(examples, tokenizer, 128, 32, cache_dir, encode_examples)


@pytest.mark.slow  # three spawned processes
def test_processes_starting_together_leave_one_whole_file(tmp_path, tokenizer):
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(3)
    processes = [
        context.Process(target=_encode_into, args=(str(tmp_path), barrier)) for _ in range(3)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=scaled_timeout(300))
        assert process.exitcode == 0

    (cached,) = tmp_path.glob("encoded-*.npz")
    examples = read_examples(str(SAMPLE / "train.tsv"))
    encoder = CountingEncoder()
    result = token_cache.cached_encode(examples, tokenizer, 128, 32, str(tmp_path), encoder)
    assert encoder.calls == 0
    assert_same(result, encode_examples(tokenizer, examples, 128, 32))
    assert not list(tmp_path.glob(".*tmp"))
