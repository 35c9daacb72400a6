"""Synthetic training examples with the lengths of the Dacon Korean news data.

The benchmarks need the real job's padding pattern, not its words: articles mostly 200-1000
KoBART tokens (truncated at 512, the original max_len), summaries 20-80 tokens. Token ids are
uniform over the ordinary vocabulary; the content does not change the cost of a step.
"""

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from bench.model_shapes import BOS, DECODER_START, EOS, PAD, VOCAB_SIZE
from kobart_flax import batching
from kobart_flax.overrides import load_config
from kobart_flax.tokenization import EncodedExample

MAX_SOURCE_LENGTH = 512  # the original project's max_len; <s> and </s> included
# Article length before truncation: log-normal with median 500 tokens; sigma 0.45 puts
# 90% of articles between 240 and 1050 tokens, and about half of them above 512.
ARTICLE_MEDIAN_TOKENS = 500
ARTICLE_LOG_SIGMA = 0.45
ARTICLE_MIN_TOKENS = 50
# Summary length: normal around 48 tokens, kept inside the observed 20-80.
SUMMARY_MEAN_TOKENS = 48
SUMMARY_SD_TOKENS = 14
SUMMARY_RANGE = (20, 80)
FIRST_ORDINARY_ID = 4  # ids 0-3 are <s>, </s>, <usr>, <pad>

KOBART_BASE_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "kobart_base.py"


def article_and_summary_lengths(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Untruncated content lengths (no special tokens): ([count], [count]) int arrays."""
    rng = np.random.default_rng(seed)
    articles = rng.lognormal(np.log(ARTICLE_MEDIAN_TOKENS), ARTICLE_LOG_SIGMA, count)
    articles = np.maximum(articles.round(), ARTICLE_MIN_TOKENS).astype(np.int64)
    summaries = rng.normal(SUMMARY_MEAN_TOKENS, SUMMARY_SD_TOKENS, count).round()
    summaries = np.clip(summaries, *SUMMARY_RANGE).astype(np.int64)
    return articles, summaries


def dacon_like_examples(count: int, seed: int) -> list[EncodedExample]:
    """Examples as kobart-flax encodes them: ``<s> news </s>`` (truncated), ``summary </s>``."""
    articles, summaries = article_and_summary_lengths(count, seed)
    rng = np.random.default_rng((seed, 1))
    examples = []
    for article, summary in zip(articles, summaries, strict=True):
        news = rng.integers(FIRST_ORDINARY_ID, VOCAB_SIZE, min(article, MAX_SOURCE_LENGTH - 2))
        words = rng.integers(FIRST_ORDINARY_ID, VOCAB_SIZE, summary)
        examples.append(
            EncodedExample(
                input_ids=np.concatenate([[BOS], news, [EOS]]).astype(np.int32),
                labels=np.concatenate([words, [EOS]]).astype(np.int32),
            )
        )
    return examples


def kobart_base_buckets() -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(source, target) buckets of configs/kobart_base.py: pad exactly as the real job does."""
    data = load_config(str(KOBART_BASE_CONFIG)).data
    return data.source_buckets, data.target_buckets


def kobart_base_batches(
    examples: list[EncodedExample], batch_size: int, seed: int
) -> Iterator[dict[str, np.ndarray]]:
    """Epoch 0 of ``batching.train_batches`` with configs/kobart_base.py's buckets."""
    source_buckets, target_buckets = kobart_base_buckets()
    return batching.train_batches(
        examples,
        batch_size=batch_size,
        seed=seed,
        epoch=0,
        source_buckets=source_buckets,
        target_buckets=target_buckets,
        pad_token_id=PAD,
        decoder_start_token_id=DECODER_START,
    )


def real_tokens(batch: dict[str, np.ndarray]) -> int:
    """Non-padding source plus target tokens of a batch."""
    return int(batch["attention_mask"].sum() + batch["decoder_attention_mask"].sum())


def all_tokens(batch: dict[str, np.ndarray]) -> int:
    """Source plus target positions a step computes on, padding included."""
    return int(batch["attention_mask"].size + batch["decoder_attention_mask"].size)
