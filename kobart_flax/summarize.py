"""Texts in, summaries out: the one generation path for evaluation, predict and the demo.

Sources are tokenized as in training (``<s> text </s>``, truncated), sorted longest
first, padded to a bucket length and a full batch (so the compiled programs are bounded
by the number of buckets), generated with :func:`kobart_flax.generation.generate`, and
returned in the input order.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence

import jax.numpy as jnp
import numpy as np

from kobart_flax.batching import pick_bucket
from kobart_flax.generation import GenerationSettings, generate_jit
from kobart_flax.modeling import BartForConditionalGenerationModule
from kobart_flax.positions import POSITION_OFFSET, usable_positions

logger = logging.getLogger(__name__)

DEFAULT_SOURCE_BUCKETS = (64, 128, 256, 512, 1024)
MIN_SOURCE_LENGTH = 3  # <s>, one token of text, </s>


def check_max_source_length(
    max_source_length: int,
    module: BartForConditionalGenerationModule,
    name: str = "max_source_length",
) -> None:
    """ValueError unless ``max_source_length`` fits the model's position table; ``name`` is
    what the message calls it (a command's flag).

    Past it, the position lookups of the longest bucket fall off the table: NaN logits and an
    empty summary for every text of the batch, short ones included, with no error.
    """
    limit = position_limit(module)
    if not MIN_SOURCE_LENGTH <= max_source_length <= limit:
        raise ValueError(
            f"{name}={max_source_length}: must be {MIN_SOURCE_LENGTH} to {limit}, "
            f"the source positions of the model (max_position_embeddings="
            f"{module.spec.max_position_embeddings} minus BART's offset {POSITION_OFFSET})"
        )


def position_limit(module: BartForConditionalGenerationModule) -> int:
    """The most tokens the model reads on either side: its position table less BART's offset."""
    return usable_positions(module.spec.max_position_embeddings)


def check_max_length(
    max_length: int, module: BartForConditionalGenerationModule, name: str = "max_length"
) -> None:
    """ValueError if summaries of ``max_length`` decoder tokens (the start token included)
    would run past the decoder's positions: as on the source side, NaN logits, no error."""
    limit = position_limit(module)
    if max_length > limit:
        raise ValueError(
            f"{name}={max_length}: must be at most {limit}, the decoder positions of the model "
            f"(max_position_embeddings={module.spec.max_position_embeddings} minus BART's "
            f"offset {POSITION_OFFSET})"
        )


def default_max_source_length(tokenizer, module: BartForConditionalGenerationModule) -> int:
    """The tokenizer's ``model_max_length`` where it is a real limit within the model's
    positions (an export's says 1024, where its tokenizer truncates), else the positions.

    A training run's ``final_model/`` and KoBART's hub tokenizer carry no limit (transformers
    then reports 1e30): the model reads all it can, as in transformers with truncation.
    """
    limit = position_limit(module)
    given = getattr(tokenizer, "model_max_length", None)
    return given if isinstance(given, int) and MIN_SOURCE_LENGTH <= given <= limit else limit


class Summarizer:
    """Batched, jitted summarization with one model and one set of generation settings."""

    def __init__(
        self,
        module: BartForConditionalGenerationModule,
        tokenizer,
        settings: GenerationSettings,
        *,
        batch_size: int = 16,
        max_source_length: int = 512,
        source_buckets: Sequence[int] = DEFAULT_SOURCE_BUCKETS,
    ):
        check_max_source_length(max_source_length, module)
        check_max_length(settings.max_length, module)
        self.tokenizer = tokenizer
        self.settings = settings
        self.batch_size = batch_size
        self.max_source_length = max_source_length
        self.source_buckets = tuple(b for b in source_buckets if b < max_source_length) + (
            max_source_length,
        )
        self._generate = functools.partial(generate_jit, module, settings=settings)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """``<s> text </s>`` ids, truncated to ``max_source_length`` keeping ``</s>``."""
        bos, eos = self.tokenizer.bos_token_id, self.tokenizer.eos_token_id
        tokens = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [[bos, *ids[: self.max_source_length - 2], eos] for ids in tokens]

    def is_truncated(self, text: str) -> bool:
        return self.count_truncated([text]) == 1

    def count_truncated(self, texts: Sequence[str]) -> int:
        """How many of ``texts`` are cut to ``max_source_length`` (``<s>`` and ``</s>``
        included) by :meth:`encode`."""
        tokens = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return sum(len(ids) > self.max_source_length - 2 for ids in tokens)

    def summarize(
        self,
        params: dict,
        texts: Sequence[str],
        progress: Callable[[int, int], None] | None = None,
    ) -> list[str]:
        """Summaries in the order of ``texts``; ``progress(done, total)`` after each batch."""
        for index, text in enumerate(texts):
            if not text.strip():
                raise ValueError(f"text {index} is empty")
        encoded = self.encode(texts)
        order = np.argsort([-len(ids) for ids in encoded], kind="stable")
        summaries: list[str] = [""] * len(texts)
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            length = pick_bucket(max(len(encoded[i]) for i in rows), self.source_buckets)
            # Always a full batch: the last one is topped up with all-padding rows.
            input_ids = np.full((self.batch_size, length), pad, np.int32)
            attention_mask = np.zeros((self.batch_size, length), np.int32)
            for slot, row in enumerate(rows):
                input_ids[slot, : len(encoded[row])] = encoded[row]
                attention_mask[slot, : len(encoded[row])] = 1
            sequences = np.asarray(
                self._generate(params, jnp.asarray(input_ids), jnp.asarray(attention_mask))
            )
            texts_out = self.tokenizer.batch_decode(
                sequences[: len(rows)], skip_special_tokens=True
            )
            for row, summary in zip(rows, texts_out, strict=True):
                summaries[row] = summary.strip()
            if progress is not None:
                progress(min(start + self.batch_size, len(order)), len(order))
        return summaries
