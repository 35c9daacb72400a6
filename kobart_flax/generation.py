"""Greedy and beam search over a ``tokens_to_logits`` callback with a decoder KV cache.

Everything runs inside one ``jax.lax.while_loop`` with fixed-size buffers, so a
``(batch, source length, settings)`` combination compiles once. The search follows
transformers' (5.x) vectorised beam search step for step, including its stopping rules
and length penalty, so the tokens equal PyTorch ``generate`` on the same weights.

Shapes: ``B`` batch, ``K`` beams, ``L`` max_length (decoder tokens including the start
token), ``V`` vocabulary.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp

from kobart_flax.modeling import BartForConditionalGenerationModule

# transformers' "minus infinity" for scores of beams that must not be picked; a finite
# value so that sums of such scores stay ordered rather than turning into NaN.
LARGE_NEGATIVE = -1.0e9

TokensToLogits = Callable[[jax.Array, dict, jax.Array], tuple[jax.Array, dict]]


@dataclasses.dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings with transformers' meaning; hashable, so a static jit argument."""

    max_length: int  # decoder tokens, the start token included
    decoder_start_token_id: int
    eos_token_id: int
    pad_token_id: int
    num_beams: int = 1
    min_length: int = 0
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    early_stopping: bool | Literal["never"] = False
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | None = None

    def __post_init__(self):
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2 (start token + one), got {self.max_length}")
        if self.num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {self.num_beams}")
        if self.early_stopping not in (True, False, "never"):
            raise ValueError(
                f"early_stopping must be True, False or 'never', got {self.early_stopping!r}"
            )


def process_scores(
    scores: jax.Array, sequences: jax.Array, cur_len: jax.Array, settings: GenerationSettings
) -> jax.Array:
    """transformers' logits processors, in its order. [N, V] scores, [N, L] tokens so far."""
    vocab = jnp.arange(scores.shape[-1])
    if settings.no_repeat_ngram_size > 0:
        banned = banned_ngram_tokens(
            sequences, cur_len, settings.no_repeat_ngram_size, scores.shape[-1]
        )
        scores = jnp.where(banned, -jnp.inf, scores)
    if settings.min_length > 0:
        too_short = cur_len < settings.min_length
        scores = jnp.where(too_short & (vocab == settings.eos_token_id), -jnp.inf, scores)
    for forced_id, position in (
        (settings.forced_bos_token_id, 1),
        (settings.forced_eos_token_id, settings.max_length - 1),
    ):
        if forced_id is not None:
            forced = jnp.where(vocab == forced_id, 0.0, -jnp.inf).astype(scores.dtype)
            scores = jnp.where(cur_len == position, forced[None, :], scores)
    return scores


def banned_ngram_tokens(
    sequences: jax.Array, cur_len: jax.Array, n: int, vocab_size: int
) -> jax.Array:
    """[N, V] bool: tokens that would repeat an n-gram already in ``sequences[:, :cur_len]``."""
    length = sequences.shape[1]
    if n > length:
        return jnp.zeros((sequences.shape[0], vocab_size), bool)
    starts = jnp.arange(length - n + 1)
    # [N, windows, n]: every n-gram that starts at a buffer position.
    ngrams = sequences[:, starts[:, None] + jnp.arange(n)[None, :]]
    # The last n - 1 tokens generated so far: [N, n - 1].
    prefix = jax.lax.dynamic_slice_in_dim(sequences, cur_len - (n - 1), n - 1, axis=1)
    matches = jnp.all(ngrams[:, :, :-1] == prefix[:, None, :], axis=-1)
    # Only n-grams that lie wholly inside the generated part count.
    matches &= (starts + n <= cur_len)[None, :]
    matches &= cur_len + 1 >= n
    banned_ids = jnp.where(matches, ngrams[:, :, -1], vocab_size)  # vocab_size = "none"
    banned = jnp.zeros((sequences.shape[0], vocab_size + 1), bool)
    banned = banned.at[jnp.arange(sequences.shape[0])[:, None], banned_ids].set(True)
    return banned[:, :vocab_size]


def greedy_search(
    tokens_to_logits: TokensToLogits, cache: dict, batch_size: int, settings: GenerationSettings
) -> jax.Array:
    """[B, L] tokens: start token, then argmax tokens, then padding after </s>."""
    sequences = jnp.full((batch_size, settings.max_length), settings.pad_token_id, jnp.int32)
    sequences = sequences.at[:, 0].set(settings.decoder_start_token_id)

    def keep_going(carry):
        cur_len, _, finished, _ = carry
        return (cur_len < settings.max_length) & ~jnp.all(finished)

    def step(carry):
        cur_len, sequences, finished, cache = carry
        last = jax.lax.dynamic_slice_in_dim(sequences, cur_len - 1, 1, axis=1)  # [B, 1]
        logits, cache = tokens_to_logits(last, cache, cur_len - 1)
        scores = process_scores(logits, sequences, cur_len, settings)
        next_tokens = jnp.argmax(scores, axis=-1).astype(jnp.int32)
        next_tokens = jnp.where(finished, settings.pad_token_id, next_tokens)
        sequences = jax.lax.dynamic_update_slice_in_dim(sequences, next_tokens[:, None], cur_len, 1)
        finished |= next_tokens == settings.eos_token_id
        return cur_len + 1, sequences, finished, cache

    init = (jnp.array(1, jnp.int32), sequences, jnp.zeros((batch_size,), bool), cache)
    return jax.lax.while_loop(keep_going, step, init)[1]


class BeamState(NamedTuple):
    cur_len: jax.Array  # int32 scalar: decoder tokens so far (the start token included)
    running_sequences: jax.Array  # [B, K, L] the live beams
    running_scores: jax.Array  # [B, K] their summed log-probabilities
    sequences: jax.Array  # [B, K, L] the best finished hypotheses
    scores: jax.Array  # [B, K] their length-penalised scores
    is_finished: jax.Array  # [B, K] whether each finished slot holds a hypothesis
    can_improve: jax.Array  # [B, 1] transformers' early-stop heuristic, not yet satisfied
    all_hit_stop: jax.Array  # bool scalar: every candidate of the last step hit a stop
    cache: dict


def gather_beams(tree, beam_indices: jax.Array):
    """[B, K_old, ...] --> [B, K_new, ...] picking ``beam_indices`` [B, K_new] per batch row."""
    return jax.tree.map(
        lambda x: jnp.take_along_axis(x, _expand_like(beam_indices, x), axis=1), tree
    )


def _expand_like(indices: jax.Array, target: jax.Array) -> jax.Array:
    return indices.reshape(indices.shape + (1,) * (target.ndim - indices.ndim))


def reorder_cache(cache: dict, flat_indices: jax.Array) -> dict:
    """Pick self-attention cache rows [B * K, ...] by ``flat_indices``.

    Scalars (the cache index) stay, and so do the cross-attention keys/values: they are
    [B, ...], one copy per source shared by its beams, and beams never move between sources.
    """

    def pick(path, x):
        if x.ndim == 0 or path[-1].key in ("cross_key", "cross_value"):
            return x
        return x[flat_indices]

    return jax.tree_util.tree_map_with_path(pick, cache)


def beam_search(
    tokens_to_logits: TokensToLogits, cache: dict, batch_size: int, settings: GenerationSettings
) -> jax.Array:
    """[B, L] tokens of the best finished hypothesis per batch row (transformers 5.x rules).

    ``tokens_to_logits`` works on B * K rows (each source's K beams consecutive).
    """
    num_beams, max_length = settings.num_beams, settings.max_length
    keep = 2 * num_beams  # top candidates per step: enough live beams even if K hit </s>
    is_top_k = jnp.arange(keep) < num_beams

    sequences = jnp.full((batch_size, num_beams, max_length), settings.pad_token_id, jnp.int32)
    sequences = sequences.at[:, :, 0].set(settings.decoder_start_token_id)
    init = BeamState(
        cur_len=jnp.array(1, jnp.int32),
        running_sequences=sequences,
        # Only beam 0 is live at first, so the first step does not pick K copies of one token.
        running_scores=jnp.where(jnp.arange(num_beams) == 0, 0.0, LARGE_NEGATIVE)[None, :]
        * jnp.ones((batch_size, 1)),
        sequences=sequences,
        scores=jnp.full((batch_size, num_beams), LARGE_NEGATIVE),
        is_finished=jnp.zeros((batch_size, num_beams), bool),
        can_improve=jnp.ones((batch_size, 1), bool),
        all_hit_stop=jnp.array(False),
        cache=cache,
    )

    def keep_going(state: BeamState):
        all_full = jnp.all(state.is_finished) & (settings.early_stopping is True)
        return jnp.any(state.can_improve) & ~all_full & ~state.all_hit_stop

    def step(state: BeamState) -> BeamState:
        cur_len = state.cur_len
        # [B, K, L] --> [B * K, L]
        flat_running = state.running_sequences.reshape(batch_size * num_beams, max_length)
        last = jax.lax.dynamic_slice_in_dim(flat_running, cur_len - 1, 1, axis=1)
        logits, cache = tokens_to_logits(last, state.cache, cur_len - 1)
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        log_probs = process_scores(log_probs, flat_running, cur_len, settings)
        vocab_size = log_probs.shape[-1]
        # [B * K, V] --> [B, K, V], plus each beam's score so far --> [B, K * V]
        totals = log_probs.reshape(batch_size, num_beams, vocab_size)
        totals = (totals + state.running_scores[:, :, None]).reshape(batch_size, -1)

        candidate_scores, candidate_index = jax.lax.top_k(totals, keep)  # [B, 2K]
        source_beam = candidate_index // vocab_size
        candidate_token = (candidate_index % vocab_size).astype(jnp.int32)
        candidates = gather_beams(state.running_sequences, source_beam)  # [B, 2K, L]
        candidates = jax.lax.dynamic_update_slice_in_dim(
            candidates, candidate_token[:, :, None], cur_len, axis=2
        )
        hits_stop = (candidate_token == settings.eos_token_id) | (cur_len + 1 >= max_length)

        # Live beams for the next step: the best K candidates that did not stop.
        live_scores = candidate_scores + hits_stop * LARGE_NEGATIVE
        _, live_pick = jax.lax.top_k(live_scores, num_beams)  # [B, K]
        running_sequences, running_scores, running_source = gather_beams(
            (candidates, live_scores, source_beam), live_pick
        )

        # Finished hypotheses: merge the stopped top-K candidates into the kept best K.
        just_finished = hits_stop & is_top_k[None, :]
        finished_scores = candidate_scores / (
            cur_len.astype(jnp.float32) ** settings.length_penalty
        )
        batch_full = jnp.all(state.is_finished, axis=-1, keepdims=True) & (
            settings.early_stopping is True
        )
        finished_scores += batch_full * LARGE_NEGATIVE
        finished_scores += ~state.can_improve * LARGE_NEGATIVE
        finished_scores += ~just_finished * LARGE_NEGATIVE
        merged = (
            jnp.concatenate([state.sequences, candidates], axis=1),
            jnp.concatenate([state.scores, finished_scores], axis=1),
            jnp.concatenate([state.is_finished, just_finished], axis=1),
        )
        _, best_pick = jax.lax.top_k(merged[1], num_beams)
        sequences, scores, is_finished = gather_beams(merged, best_pick)

        # Each live beam continues the cache row of the beam it came from.
        flat_source = (jnp.arange(batch_size)[:, None] * num_beams + running_source).reshape(-1)
        cache = reorder_cache(cache, flat_source)

        next_len = cur_len + 1
        if settings.early_stopping == "never" and settings.length_penalty > 0.0:
            best_length = jnp.asarray(max_length - 1, jnp.float32)
        else:
            best_length = (next_len - 1).astype(jnp.float32)
        best_possible = running_scores[:, :1] / best_length**settings.length_penalty
        worst_finished = jnp.where(
            is_finished, jnp.min(scores, axis=1, keepdims=True), LARGE_NEGATIVE
        )
        can_improve = state.can_improve & jnp.any(
            best_possible > worst_finished, axis=-1, keepdims=True
        )
        return BeamState(
            cur_len=next_len,
            running_sequences=running_sequences,
            running_scores=running_scores,
            sequences=sequences,
            scores=scores,
            is_finished=is_finished,
            can_improve=can_improve,
            all_hit_stop=jnp.all(hits_stop),
            cache=cache,
        )

    final = jax.lax.while_loop(keep_going, step, init)
    return final.sequences[:, 0, :]


def generate(
    module: BartForConditionalGenerationModule,
    params: dict,
    input_ids: jax.Array,
    attention_mask: jax.Array,
    settings: GenerationSettings,
) -> jax.Array:
    """Summaries for a batch of sources: [B, S] --> [B, L] tokens (start token first).

    Pure and jittable (``settings`` static); batch rows are independent, so a batch
    sharded over the mesh's data axis generates in parallel.
    """
    batch_size = input_ids.shape[0]
    num_beams = settings.num_beams
    encoded = module.apply({"params": params}, input_ids, attention_mask, method=module.encode)
    # The decoder runs B * K rows (beam k of source b is row b * K + k) against the B
    # sources: cross-attention folds each source's beams together, so the projected source
    # is cached and read once per article, not once per beam.
    rows = batch_size * num_beams

    def decode(token_ids, variables, position, **kwargs):
        return module.apply(
            variables,
            token_ids,
            encoded,
            attention_mask,
            position_ids=jnp.full((rows, token_ids.shape[1]), position, jnp.int32),
            decode=True,
            method=module.decode,
            **kwargs,
        )

    # One call with a dummy token creates the cache: empty self-attention caches of
    # max_length, and the encoder output projected once for every cross-attention.
    _, variables = decode(
        jnp.full((rows, 1), settings.decoder_start_token_id, jnp.int32),
        {"params": params},
        0,
        mutable=["cache"],
        cache_length=settings.max_length,
    )
    cache = variables["cache"]

    def tokens_to_logits(token_ids, cache, position):
        logits, mutated = decode(
            token_ids, {"params": params, "cache": cache}, position, mutable=["cache"]
        )
        return logits[:, -1, :].astype(jnp.float32), mutated["cache"]

    search = greedy_search if num_beams == 1 else beam_search
    return search(tokens_to_logits, cache, batch_size, settings)


@functools.partial(jax.jit, static_argnames=("module", "settings"))
def generate_jit(module, params, input_ids, attention_mask, settings):
    """:func:`generate`, compiled once per (module, settings, input shape)."""
    return generate(module, params, input_ids, attention_mask, settings)
