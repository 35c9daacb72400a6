"""Encoded examples cached on disk, so a restart (after a preemption) skips tokenization.

The cache key is a hash of everything the ids depend on: the examples' text, in order; the
tokenizer (its serialized model, vocabulary, normalizer and special ids); the maximum
lengths; and ``ENCODING_VERSION``. Changing any of them selects another file, so a stale
entry is never read; old entries are left for the user to delete (``<cache>/encoded-*``).

One file per key, ``encoded-<key>.npz``: every input and label id in two flat int32 arrays
plus their lengths. It is written under a unique temporary name and renamed into place, so
processes of a host that start together may both write it, and a reader sees a whole file
or none. On ``gs://`` a single object write is already all-or-nothing.
"""

import hashlib
import io
import logging
import os
import uuid
from collections.abc import Callable, Sequence

import numpy as np
from etils import epath

from kobart_flax import storage
from kobart_flax.data_io import Example
from kobart_flax.tokenization import EncodedExample, encode_examples

logger = logging.getLogger(__name__)

# Raise when encode_examples changes the ids it makes for the same inputs.
ENCODING_VERSION = 1


def cache_key(
    examples: Sequence[Example], tokenizer, max_source_length: int, max_target_length: int
) -> str:
    digest = hashlib.sha256()
    digest.update(f"v{ENCODING_VERSION} {max_source_length} {max_target_length}\n".encode())
    digest.update(tokenizer.backend_tokenizer.to_str().encode())
    digest.update(f"{tokenizer.bos_token_id} {tokenizer.eos_token_id}\n".encode())
    for example in examples:
        # Lengths first: no two different lists of texts give the same byte stream.
        news, summary = example.news.encode(), example.summary.encode()
        digest.update(f"{len(news)} {len(summary)}\n".encode())
        digest.update(news)
        digest.update(summary)
    return digest.hexdigest()[:32]


def cached_encode(
    examples: Sequence[Example],
    tokenizer,
    max_source_length: int,
    max_target_length: int,
    cache_dir: str,
    encode: Callable[..., list[EncodedExample]] = encode_examples,
) -> list[EncodedExample]:
    """``encode(tokenizer, examples, max_source_length, max_target_length)``, from the cache
    in ``cache_dir`` when it holds this exact input, else computed and stored there."""
    key = cache_key(examples, tokenizer, max_source_length, max_target_length)
    path = storage.as_path(cache_dir) / f"encoded-{key}.npz"
    if path.exists():
        encoded = _read(path)
        if len(encoded) == len(examples):
            logger.info("tokenized examples from the cache %s", path)
            return encoded
        logger.warning(
            "%s: holds %d examples, not %d: encoding again", path, len(encoded), len(examples)
        )
    encoded = encode(tokenizer, examples, max_source_length, max_target_length)
    if encoded:  # (encode raises on no examples; nothing to store either way)
        _write(path, encoded)
        logger.info("cached the tokenized examples in %s", path)
    return encoded


def _read(path: epath.Path) -> list[EncodedExample]:
    with np.load(io.BytesIO(path.read_bytes())) as arrays:
        input_ids, labels = arrays["input_ids"], arrays["labels"]
        source_lengths, target_lengths = arrays["source_lengths"], arrays["target_lengths"]
    # Flat ids -> one array per example, at the offsets the lengths give.
    inputs = np.split(input_ids, np.cumsum(source_lengths)[:-1])
    targets = np.split(labels, np.cumsum(target_lengths)[:-1])
    return [EncodedExample(input_ids=i, labels=t) for i, t in zip(inputs, targets, strict=True)]


def _write(path: epath.Path, encoded: Sequence[EncodedExample]) -> None:
    buffer = io.BytesIO()
    np.savez(
        buffer,
        input_ids=np.concatenate([example.input_ids for example in encoded]).astype(np.int32),
        labels=np.concatenate([example.labels for example in encoded]).astype(np.int32),
        source_lengths=np.array([len(example.input_ids) for example in encoded], np.int64),
        target_lengths=np.array([len(example.labels) for example in encoded], np.int64),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    if storage.is_remote(path):
        path.write_bytes(buffer.getvalue())
        return
    staging = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    staging.write_bytes(buffer.getvalue())
    os.replace(staging, path)
