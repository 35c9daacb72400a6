"""Korean ROUGE, as the Dacon summarization competition scored it.

``rouge_score``'s default tokenizer lower-cases and drops every character outside
``[a-z0-9]``, so it scores any Korean pair as 0. Here the n-gram matching and F-measure
come from ``rouge_score`` and the tokenization is the competition's: keep only
``[A-Za-z0-9가-힣]`` (everything else becomes a space), then split into Mecab morphemes.
Whitespace and character tokenizations are options for comparison.

Scores are the mean over examples of each example's precision, recall and F1. (Scoring the
summaries of a training run is :mod:`kobart_flax.rouge_eval`'s job; this module only scores.)

``rouge_score`` (and the nltk it pulls in, a second to import) is imported on first use, so
that config validation can read ``TOKENIZATIONS`` from here cheaply.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
TOKENIZATIONS = ("mecab", "whitespace", "character")
NOT_KOREAN_OR_ALPHANUMERIC = re.compile(r"[^A-Za-z0-9가-힣]+")


def clean(text: str) -> str:
    return NOT_KOREAN_OR_ALPHANUMERIC.sub(" ", text).strip()


# Mecab's time grows faster than linearly with the length of one call (0.03 s for 2,000
# characters, 10 s for a million) and it fails outright on a few million; news articles and
# summaries are far shorter, so they are analysed whole as before and only longer texts in parts.
MECAB_MAX_CHARS = 2000


class MecabTokenizer:
    """Morphemes from python-mecab-ko (its dictionary ships in the wheel: works offline)."""

    def __init__(self):
        import mecab

        self._mecab = mecab.MeCab()
        self._error = mecab.MeCabError

    def tokenize(self, text: str) -> list[str]:
        cleaned = clean(text)
        try:
            return [token for part in parts(cleaned) for token in self._mecab.morphs(part)]
        except self._error as error:
            raise ValueError(
                f"Mecab cannot tokenize a text of {len(text):,} characters ({error})"
            ) from None


def parts(text: str) -> list[str]:
    """``text`` in pieces of at most ``MECAB_MAX_CHARS``, cut at spaces where there are any
    (morphemes never span a space); ``[text]`` when it is short, none when it is empty."""
    pieces: list[str] = []
    while len(text) > MECAB_MAX_CHARS:
        cut = text.rfind(" ", 0, MECAB_MAX_CHARS + 1)
        cut = cut if cut > 0 else MECAB_MAX_CHARS
        pieces.append(text[:cut])
        text = text[cut:].lstrip(" ")
    return [*pieces, text] if text else pieces


class WhitespaceTokenizer:
    def tokenize(self, text: str) -> list[str]:
        return clean(text).split()


class CharacterTokenizer:
    def tokenize(self, text: str) -> list[str]:
        return list(clean(text).replace(" ", ""))


@functools.cache
def make_tokenizer(tokenization: str):
    tokenizers = {
        "mecab": MecabTokenizer,
        "whitespace": WhitespaceTokenizer,
        "character": CharacterTokenizer,
    }
    if tokenization not in tokenizers:
        raise ValueError(f"tokenization must be one of {TOKENIZATIONS}, got {tokenization!r}")
    return tokenizers[tokenization]()


def rouge(
    predictions: Sequence[str],
    references: Sequence[str],
    tokenization: str = "mecab",
    names: Sequence[str] | None = None,
) -> dict[str, float]:
    """Mean ROUGE-1/2/L over examples: keys like ``rouge1_f``, ``rouge2_p``, ``rougeL_r``.

    ``names`` (say ``file:line``) name the examples in a ValueError for a text that cannot be
    tokenized.
    """
    if not predictions:
        raise ValueError("no predictions to score")
    totals = rouge_totals(predictions, references, tokenization, names)
    return {name: total / len(predictions) for name, total in totals.items()}


def rouge_totals(
    predictions: Sequence[str],
    references: Sequence[str],
    tokenization: str = "mecab",
    names: Sequence[str] | None = None,
) -> dict[str, float]:
    """Sums over examples of what :func:`rouge` averages: parts of a sample (one per host)
    add up to the whole sample's sums."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), tokenizer=make_tokenizer(tokenization))
    totals = {f"{kind}_{part}": 0.0 for kind in ROUGE_TYPES for part in "fpr"}
    for index, (prediction, reference) in enumerate(zip(predictions, references, strict=True)):
        try:
            # rouge_score's order: (target, prediction).
            scores = scorer.score(reference, prediction)
        except ValueError as error:
            name = names[index] if names is not None else f"example {index}"
            raise ValueError(f"{name}: ROUGE: {error}") from None
        for kind in ROUGE_TYPES:
            totals[f"{kind}_f"] += scores[kind].fmeasure
            totals[f"{kind}_p"] += scores[kind].precision
            totals[f"{kind}_r"] += scores[kind].recall
    return totals
