"""Korean ROUGE with hand-computed expected values."""

import pytest
from rouge_score import rouge_scorer

from kobart_flax.korean_rouge import clean, rouge, rouge_totals

REFERENCE = "정부는 내일 새 정책을 발표한다"
# Mecab: 정부 는 내일 새 정책 을 발표 한다        (8 morphemes)
PREDICTION = "정부가 새 정책을 내일 발표했다"
# Mecab: 정부 가 새 정책 을 내일 발표 했 다       (9 morphemes)


def test_mecab_rouge_matches_hand_count():
    scores = rouge([PREDICTION], [REFERENCE])
    # Unigrams shared: 정부 내일 새 정책 을 발표 = 6.
    assert scores["rouge1_p"] == pytest.approx(6 / 9)
    assert scores["rouge1_r"] == pytest.approx(6 / 8)
    assert scores["rouge1_f"] == pytest.approx(12 / 17)
    # Bigrams shared: (새 정책) (정책 을) = 2, of 8 predicted and 7 reference bigrams.
    assert scores["rouge2_p"] == pytest.approx(2 / 8)
    assert scores["rouge2_r"] == pytest.approx(2 / 7)
    assert scores["rouge2_f"] == pytest.approx(4 / 15)
    # Longest common subsequence: 정부 새 정책 을 발표 = 5.
    assert scores["rougeL_f"] == pytest.approx(10 / 17)


def test_whitespace_and_character_tokenizations():
    # Words shared: 내일 새 정책을 = 3 of 5 and 5.
    assert rouge([PREDICTION], [REFERENCE], "whitespace")["rouge1_f"] == pytest.approx(0.6)
    # Characters shared (with counts): 정x2 부 내 일 새 책 을 발 표 다 = 11 of 13 and 13.
    assert rouge([PREDICTION], [REFERENCE], "character")["rouge1_f"] == pytest.approx(11 / 13)


def test_korean_is_never_scored_as_zero():
    """rouge_score's default tokenizer drops Hangul; ours must not."""
    default_scorer = rouge_scorer.RougeScorer(["rouge1"])
    assert default_scorer.score(REFERENCE, REFERENCE)["rouge1"].fmeasure == 0.0
    for tokenization in ("mecab", "whitespace", "character"):
        assert rouge([REFERENCE], [REFERENCE], tokenization)["rouge1_f"] == pytest.approx(1.0)


def test_only_korean_letters_and_digits_count():
    assert clean("“정부는” 3일… KTX를 늘린다!") == "정부는 3일 KTX를 늘린다"
    punctuated = rouge(["“정부는, 새 정책을!”"], ["정부는 새 정책을"])
    assert punctuated["rouge1_f"] == pytest.approx(1.0)


def test_scores_are_means_over_examples():
    scores = rouge([REFERENCE, "전혀 다른 문장"], [REFERENCE, REFERENCE], "whitespace")
    assert scores["rouge1_f"] == pytest.approx(0.5)


def test_mismatched_lengths_are_an_error():
    with pytest.raises(ValueError, match="1 predictions for 2 references"):
        rouge(["a"], ["a", "b"])


def test_totals_of_parts_add_up_to_the_whole_samples_mean():
    """What hosts summing their parts of a ROUGE sample rely on."""
    predictions = [PREDICTION, "전혀 다른 문장", REFERENCE]
    references = [REFERENCE, REFERENCE, "정부는 새 정책을"]
    whole = rouge(predictions, references, "whitespace")
    parts = [rouge_totals(predictions[i::2], references[i::2], "whitespace") for i in range(2)]
    for name, mean in whole.items():
        assert parts[0][name] + parts[1][name] == pytest.approx(3 * mean)
    assert rouge_totals([], [], "whitespace")["rouge1_f"] == 0.0
