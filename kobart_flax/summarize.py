"""Texts in, summaries out: the one generation path for evaluation, predict and the demo.

Sources are tokenized as in training (``<s> text </s>``, truncated), sorted longest
first, padded to a bucket length and a full batch (so the compiled programs are bounded
by the number of buckets), generated with :func:`kobart_flax.generation.generate`, and
returned in the input order.

Given a mesh, each batch is split over its batch axes (data x fsdp) and the params stay in
the shardings training gives them, so every device of every host generates a share of the
rows; the tokens come back whole on every host. All hosts must then call
:meth:`Summarizer.summarize` with the same texts: a batch is a collective.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from kobart_flax import sharding
from kobart_flax.batching import pick_bucket
from kobart_flax.generation import GenerationSettings, generate, generate_jit
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


def all_devices_mesh() -> Mesh | None:
    """Every device of every host as a data mesh (params replicated, batches split), or None
    on a single device, where generation needs no mesh."""
    return sharding.make_data_mesh() if jax.device_count() > 1 else None


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
        mesh: Mesh | None = None,
    ):
        """``mesh``: generate over all its devices (see the module docstring); None: on the
        default device, with params wherever they are. With a mesh, ``batch_size`` is rounded
        up to a multiple of its batch shards, so each device gets whole rows."""
        check_max_source_length(max_source_length, module)
        check_max_length(settings.max_length, module)
        self.tokenizer = tokenizer
        self.settings = settings
        self.mesh = mesh
        self.batch_size = batch_size
        if mesh is not None:
            shards = sharding.batch_shard_count(mesh)
            self.batch_size = -(-batch_size // shards) * shards
        self.max_source_length = max_source_length
        self.source_buckets = tuple(b for b in source_buckets if b < max_source_length) + (
            max_source_length,
        )
        self._module = module
        # One device: the shared jit of generate. A mesh needs its own program, compiled
        # for the params' training shardings (see _sharded_generate).
        self._generate = (
            None if mesh is not None else functools.partial(generate_jit, module, settings=settings)
        )
        # The params' shardings the sharded program was compiled for: see _sharded_generate.
        self._param_shardings = None

    def _generate_fn(self, params, input_ids, attention_mask):
        return generate(self._module, params, input_ids, attention_mask, self.settings)

    def _sharded_generate(self, params):
        """(params placed on the mesh as training shards them, the program taking them)."""
        param_shardings = sharding.state_shardings(params, self.mesh)
        if self._generate is None or param_shardings != self._param_shardings:
            rows = sharding.batch_sharding(self.mesh)
            program = jax.jit(
                self._generate_fn,
                in_shardings=(param_shardings, rows, rows),
                # [B, L] int32 tokens, small: gathered in the program onto every device, so
                # every host reads every summary without a further collective.
                out_shardings=sharding.replicated(self.mesh),
            )

            def generate_in_mesh(*args):
                # Traced with the mesh set: the splash kernel runs per shard (attention.py).
                with jax.set_mesh(self.mesh):
                    return program(*args)

            self._generate = generate_in_mesh
            self._param_shardings = param_shardings
        return sharding.place(params, param_shardings), self._generate

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
        summaries: list[str] = [""] * len(texts)
        done = 0
        for rows, sequences in self._generated_batches(params, texts):
            decoded = self.tokenizer.batch_decode(sequences, skip_special_tokens=True)
            for row, summary in zip(rows, decoded, strict=True):
                summaries[row] = summary.strip()
            done += len(rows)
            if progress is not None:
                progress(done, len(texts))
        return summaries

    def generate_tokens(self, params: dict, texts: Sequence[str]) -> np.ndarray:
        """[len(texts), max_length] tokens (start token first, padding after ``</s>``) in
        the order of ``texts``: what :meth:`summarize` decodes."""
        tokens = np.zeros((len(texts), self.settings.max_length), np.int32)
        for rows, sequences in self._generated_batches(params, texts):
            tokens[rows] = sequences
        return tokens

    def _generated_batches(
        self, params: dict, texts: Sequence[str]
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(indices into ``texts``, their [rows, max_length] tokens) per batch, longest
        sources first."""
        for index, text in enumerate(texts):
            if not text.strip():
                raise ValueError(f"text {index} is empty")
        encoded = self.encode(texts)
        order = np.argsort([-len(ids) for ids in encoded], kind="stable")
        pad = self.tokenizer.pad_token_id
        generate_batch = self._generate
        if self.mesh is not None:
            params, generate_batch = self._sharded_generate(params)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            length = pick_bucket(max(len(encoded[i]) for i in rows), self.source_buckets)
            # Always a full batch: the last one is topped up with all-padding rows.
            input_ids = np.full((self.batch_size, length), pad, np.int32)
            attention_mask = np.zeros((self.batch_size, length), np.int32)
            for slot, row in enumerate(rows):
                input_ids[slot, : len(encoded[row])] = encoded[row]
                attention_mask[slot, : len(encoded[row])] = 1
            if self.mesh is None:
                input_ids, attention_mask = jnp.asarray(input_ids), jnp.asarray(attention_mask)
            else:
                rows_sharding = sharding.batch_sharding(self.mesh)
                input_ids = sharding.place(input_ids, rows_sharding)
                attention_mask = sharding.place(attention_mask, rows_sharding)
            sequences = np.asarray(generate_batch(params, input_ids, attention_mask))
            yield rows, sequences[: len(rows)]
