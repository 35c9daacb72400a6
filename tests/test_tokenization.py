"""Tokenization with the bundled KoBART-style tokenizer (data/sample/tokenizer)."""

from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from kobart_flax.data_io import DataError, Example, read_examples
from kobart_flax.tokenization import encode_example, encode_examples, load_tokenizer

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "data" / "sample"
BOS, EOS, PAD = 0, 1, 3  # KoBART's ids, which the bundled tokenizer shares.


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(str(SAMPLE_DIR / "tokenizer"))


def example(news: str, summary: str = "요약입니다.") -> Example:
    return Example(news=news, summary=summary, origin="test.tsv:2")


def test_bundled_tokenizer_has_kobart_special_token_ids(tokenizer):
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3, 4, 5, 6]) == [
        "<s>", "</s>", "<usr>", "<pad>", "<sys>", "<unk>", "<mask>",
    ]  # fmt: skip
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (0, 1, 3)
    assert (tokenizer.unk_token_id, tokenizer.mask_token_id) == (5, 6)
    assert len(tokenizer) == 4000


def test_bundled_tokenizer_adds_no_special_tokens_itself(tokenizer):
    # Like KoBART's: the plain call adds nothing, so encode_examples must add <s> and </s>.
    ids = tokenizer("서울에 비가 온다.")["input_ids"]
    assert BOS not in ids and EOS not in ids


def test_decode_restores_korean_text_with_spaces(tokenizer):
    for article in read_examples(str(SAMPLE_DIR / "demo_articles.tsv")):
        ids = tokenizer(article.news, add_special_tokens=False)["input_ids"]
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids) == article.news


def test_special_tokens_are_added_exactly_once(tokenizer):
    encoded = encode_example(tokenizer, example("부산에서 축제가 열린다."), 64, 32)
    news_ids = tokenizer("부산에서 축제가 열린다.", add_special_tokens=False)["input_ids"]
    summary_ids = tokenizer("요약입니다.", add_special_tokens=False)["input_ids"]
    np.testing.assert_array_equal(encoded.input_ids, [BOS, *news_ids, EOS])
    np.testing.assert_array_equal(encoded.labels, [*summary_ids, EOS])
    assert encoded.input_ids.dtype == np.int32 and encoded.labels.dtype == np.int32
    assert list(encoded.input_ids).count(BOS) == 1 and list(encoded.input_ids).count(EOS) == 1
    assert BOS not in encoded.labels and list(encoded.labels).count(EOS) == 1


def test_truncation_keeps_the_final_eos_and_long_text_does_not_crash(tokenizer):
    long_news = " ".join(["기상청은 내일 전국에 비가 내릴 것이라고 예보했다."] * 2000)
    encoded = encode_example(tokenizer, example(long_news, long_news), 16, 8)
    assert len(encoded.input_ids) == 16 and len(encoded.labels) == 8
    assert encoded.input_ids[0] == BOS and encoded.input_ids[-1] == EOS
    assert encoded.labels[-1] == EOS
    full = tokenizer(long_news, add_special_tokens=False)["input_ids"]
    np.testing.assert_array_equal(encoded.input_ids[1:-1], full[:14])
    np.testing.assert_array_equal(encoded.labels[:-1], full[:7])


def test_token_type_ids_are_dropped(tokenizer):
    # The bundled tokenizer, like KoBART's, returns token_type_ids; they must not come along.
    assert "token_type_ids" in tokenizer("기사")
    encoded = encode_example(tokenizer, example("기사"), 8, 8)
    assert set(vars(encoded)) == {"input_ids", "labels"}


def test_batched_encoding_equals_one_at_a_time(tokenizer):
    examples = read_examples(str(SAMPLE_DIR / "test.tsv"))[:20]
    batched = encode_examples(tokenizer, examples, 48, 24)
    assert len(batched) == len(examples)
    for one_example, encoded in zip(examples, batched, strict=True):
        alone = encode_example(tokenizer, one_example, 48, 24)
        np.testing.assert_array_equal(encoded.input_ids, alone.input_ids)
        np.testing.assert_array_equal(encoded.labels, alone.labels)


def test_lengths_too_small_for_the_special_tokens_are_rejected(tokenizer):
    with pytest.raises(ValueError, match="max_source_length"):
        encode_example(tokenizer, example("기사"), 2, 8)
    with pytest.raises(ValueError, match="max_target_length"):
        encode_example(tokenizer, example("기사"), 8, 1)


def ascii_only_tokenizer(with_specials: bool) -> PreTrainedTokenizerFast:
    """A tokenizer that knows only 'a' and has no unknown token, so Korean yields no tokens."""
    vocab = {"<s>": 0, "</s>": 1, "a": 2}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = {"bos_token": "<s>", "eos_token": "</s>"} if with_specials else {}
    return PreTrainedTokenizerFast(tokenizer_object=backend, **specials)


def test_text_without_any_token_is_a_data_error_naming_the_origin():
    encode_example(ascii_only_tokenizer(True), example("a a", "a"), 8, 8)  # Sanity: works.
    with pytest.raises(DataError, match=r"^test\.tsv:2: 'news' produced no tokens"):
        encode_example(ascii_only_tokenizer(True), example("한국어", "a"), 8, 8)


def test_tokenizer_without_bos_or_eos_is_rejected_clearly():
    with pytest.raises(ValueError, match="must define both bos_token and eos_token"):
        encode_example(ascii_only_tokenizer(False), example("a", "a"), 8, 8)
