"""Tokenizer loading and turning examples into the token ids the model trains on."""

import logging
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

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncodedExample:
    input_ids: np.ndarray  # int32 [source_len]: <s> news </s>
    labels: np.ndarray  # int32 [target_len]: summary </s>


# KoBART's special tokens (ids 0, 1, 3 and 5 of its vocabulary), for tokenizers that lack them.
KOBART_SPECIAL_TOKENS = {"bos": "<s>", "eos": "</s>", "pad": "<pad>", "unk": "<unk>"}
# Training, batching and generation cannot do without these; an unknown token is optional.
REQUIRED_SPECIAL_TOKENS = ("bos", "eos", "pad")


def load_tokenizer(name_or_path: str, special_tokens: str = "") -> "PreTrainedTokenizerFast":
    """Loads a fast tokenizer from a hub name (``gogamza/kobart-base-v1``) or a directory.

    ``special_tokens`` (``model.special_tokens``, e.g. ``"bos=<s>,eos=</s>,pad=<pad>"``) names
    tokens of the vocabulary to use as the special ones. A special token that is neither named
    nor defined by the tokenizer (some KoBART mirrors ship an empty special_tokens_map.json)
    becomes KoBART's, with a warning, if the vocabulary has it.

    Raises:
      ConfigError: a named token is not in the vocabulary, or bos/eos/pad is missing and the
        vocabulary has no KoBART token to stand in.
    """
    from transformers import AutoTokenizer

    from kobart_flax.config import ConfigError, parse_special_tokens

    named = parse_special_tokens(special_tokens)
    with storage.local_directory(name_or_path) as local:
        tokenizer = AutoTokenizer.from_pretrained(local)
    vocabulary = tokenizer.get_vocab()
    defaulted = []
    for role, default in KOBART_SPECIAL_TOKENS.items():
        token = named.get(role)
        if token is None and getattr(tokenizer, f"{role}_token") is None:
            if default in vocabulary:
                token = default
                defaulted.append(f"{role} {default} (id {vocabulary[default]})")
            elif role in REQUIRED_SPECIAL_TOKENS:
                raise ConfigError(
                    f"tokenizer {name_or_path} has no {role} token and no {default} in its "
                    f"vocabulary: name one with model.special_tokens={role}=TOKEN"
                )
        if token is None:
            continue
        if token not in vocabulary:
            raise ConfigError(
                f"model.special_tokens: {role}={token} is not in the vocabulary of tokenizer "
                f"{name_or_path}"
            )
        setattr(tokenizer, f"{role}_token", token)
    if defaulted:
        logger.warning(
            "tokenizer %s lacks special tokens; using KoBART's: %s (model.special_tokens names "
            "others)",
            name_or_path,
            ", ".join(defaulted),
        )
    return tokenizer


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
            if not _has_known_text(tokenizer, ids):
                raise DataError(
                    f"{example.origin}: {field!r} has no character the tokenizer knows (only "
                    f"<unk>): {getattr(example, field)[:40]!r}; fix or remove the row"
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


def _has_known_text(tokenizer: "PreTrainedTokenizerFast", ids: list[int]) -> bool:
    """Whether non-empty ``ids`` hold any text besides unknown and special tokens.

    Zero-width spaces, emoji and other characters outside the vocabulary encode as a word
    boundary and ``<unk>`` (``▁ <unk>``): not empty, yet nothing to train on or summarize.
    Only texts holding ``<unk>`` are decoded; the membership test is a C-speed scan.
    """
    if tokenizer.unk_token_id not in ids:
        return True
    return bool(tokenizer.decode(ids, skip_special_tokens=True).strip())


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
