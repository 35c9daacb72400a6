"""Tokenizer loading and turning examples into the token ids the model trains on."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from kobart_flax import storage
from kobart_flax.data_io import DataError, Example

if TYPE_CHECKING:
    # Only for annotations: importing transformers takes seconds, and batching (which needs
    # EncodedExample from here) should not pay for it.
    from transformers import PreTrainedTokenizerFast


@dataclass(frozen=True)
class EncodedExample:
    input_ids: np.ndarray  # int32 [source_len]: <s> news </s>
    labels: np.ndarray  # int32 [target_len]: summary </s>


def load_tokenizer(name_or_path: str) -> "PreTrainedTokenizerFast":
    """Loads a fast tokenizer from a hub name (``gogamza/kobart-base-v1``) or a directory."""
    from transformers import AutoTokenizer

    with storage.local_directory(name_or_path) as local:
        return AutoTokenizer.from_pretrained(local)


def encode_example(
    tokenizer: "PreTrainedTokenizerFast",
    example: Example,
    max_source_length: int,
    max_target_length: int,
) -> EncodedExample:
    """Encodes one example; see ``encode_examples``."""
    return encode_examples(tokenizer, [example], max_source_length, max_target_length)[0]


def encode_examples(
    tokenizer: "PreTrainedTokenizerFast",
    examples: Sequence[Example],
    max_source_length: int,
    max_target_length: int,
) -> list[EncodedExample]:
    """Encodes examples as ``<s> news </s>`` inputs and ``summary </s>`` labels.

    The special tokens are added here, from ``tokenizer.bos_token_id`` and ``eos_token_id``,
    rather than by the tokenizer: KoBART's tokenizer adds none itself, and doing it explicitly
    gives the same ids whichever tokenizer (hub, local, or one that would add its own) is used.
    The labels have no ``<s>``, matching KoBART's recipe where the decoder starts from ``</s>``.

    Over-long texts are truncated (KoBART's positions stop at 1024 and the original project
    crashed on longer inputs), always keeping the final ``</s>`` so the model still learns
    where sequences end. Both texts of all examples go through the fast tokenizer in one batched
    call each.

    Raises:
      ValueError: the tokenizer has no bos/eos token, or a maximum length leaves no room for
        text besides the special tokens.
      DataError: a text produced no tokens at all; the message names the example's origin.
    """
    bos_id, eos_id = _bos_and_eos_ids(tokenizer)
    if max_source_length < 3 or max_target_length < 2:
        raise ValueError(
            "max_source_length must be >= 3 (<s>, a token, </s>) and max_target_length >= 2 "
            f"(a token, </s>); got {max_source_length} and {max_target_length}"
        )
    news_tokens = _tokenize(tokenizer, [example.news for example in examples])
    summary_tokens = _tokenize(tokenizer, [example.summary for example in examples])
    encoded = []
    for example, news_ids, summary_ids in zip(examples, news_tokens, summary_tokens, strict=True):
        for field, ids in (("news", news_ids), ("summary", summary_ids)):
            if not ids:
                raise DataError(
                    f"{example.origin}: {field!r} produced no tokens (characters the tokenizer "
                    "cannot represent, and it has no unknown token?)"
                )
        input_ids = [bos_id, *news_ids[: max_source_length - 2], eos_id]
        labels = [*summary_ids[: max_target_length - 1], eos_id]
        encoded.append(
            EncodedExample(
                input_ids=np.asarray(input_ids, dtype=np.int32),
                labels=np.asarray(labels, dtype=np.int32),
            )
        )
    return encoded


def _bos_and_eos_ids(tokenizer: "PreTrainedTokenizerFast") -> tuple[int, int]:
    bos_id, eos_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    if bos_id is None or eos_id is None:
        raise ValueError(
            f"tokenizer {tokenizer.name_or_path!r} must define both bos_token and eos_token "
            f"(got bos_token_id={bos_id}, eos_token_id={eos_id})"
        )
    return bos_id, eos_id


def _tokenize(tokenizer: "PreTrainedTokenizerFast", texts: list[str]) -> list[list[int]]:
    # token_type_ids are never requested: BART has no segment embeddings.
    return tokenizer(
        texts,
        add_special_tokens=False,
        return_attention_mask=False,
        return_token_type_ids=False,
    )["input_ids"]
