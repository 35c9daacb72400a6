"""Scaled dot-product attention behind one function, computed by the kernel the platform runs
best (``model.attention``).

- ``xla``: masked einsum and softmax, written out; runs everywhere and is the reference.
- ``cudnn``: ``jax.nn.dot_product_attention``, which on a GPU calls cuDNN's fused kernel
  (16-bit inputs only).
- ``splash``: the Pallas splash-attention kernel for TPU, fed segment ids, so blocks that
  the segment mask removes (other examples of a packed row, padding) are skipped rather
  than computed and masked. Off a TPU it runs in Pallas interpret mode: slow, for tests.
- ``auto``: cuDNN on a GPU in bfloat16/float16, splash on a TPU, xla elsewhere.

Calls a kernel cannot serve fall back to ``xla``: the cached decode step (one query
against a cache, where a fused kernel saves nothing) and attention dropout in training
(the kernels have no dropout; KoBART's ``attention_dropout`` is 0).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from kobart_flax.config import ATTENTION_IMPLEMENTATIONS
from kobart_flax.sharding import BATCH_AXES, TENSOR_AXIS

# The splash kernel tiles queries and keys in blocks of these sizes (multiples of the TPU's
# 128 lanes); lengths that none divides run on xla.
SPLASH_BLOCKS = (512, 256, 128)


def resolve(implementation: str, dtype: jnp.dtype, platform: str | None = None) -> str:
    """The kernel ``implementation`` names on ``platform`` (default: JAX's backend)."""
    if implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(
            f"attention={implementation!r}: must be one of {ATTENTION_IMPLEMENTATIONS}"
        )
    if implementation != "auto":
        return implementation
    platform = platform or jax.default_backend()
    if platform == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
        return "cudnn"
    if platform == "tpu":
        return "splash"
    return "xla"


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["dense", "query_ids", "key_ids"],
    meta_fields=["causal"],
)
@dataclasses.dataclass(frozen=True)
class AttentionMask:
    """Who may attend to whom, as a dense mask and, for splash, as segment ids.

    ``dense`` is boolean [batch or 1, 1, q_len, kv_len] (True = may attend), or None for no
    mask. ``query_ids`` [batch, q_len] and ``key_ids`` [batch, kv_len] are int segment ids
    (0 = padding) that, with ``causal``, say the same for the real query positions; None
    where only the dense mask is known (the cached decode step).
    """

    dense: jax.Array | None
    query_ids: jax.Array | None = None
    key_ids: jax.Array | None = None
    causal: bool = False

    @classmethod
    def build(
        cls,
        query_segments: jax.Array | None,
        key_segments: jax.Array | None,
        key_padding: jax.Array | None,
        causal: bool,
        query_length: int,
        key_length: int,
    ) -> AttentionMask:
        """Key padding, segment and causal constraints, as one mask. Segments are given for
        packed rows only; then padding has segment 0."""
        dense = jnp.ones((1, 1, query_length, key_length), bool)
        if key_padding is not None:
            dense = dense & key_padding.astype(bool)[:, None, None, :]
        if query_segments is not None and key_segments is not None:
            dense = dense & (query_segments[:, None, :, None] == key_segments[:, None, None, :])
            query_ids, key_ids = query_segments, key_segments
        else:
            # One segment: every query (padding ones too: their outputs are never read) sees
            # the real keys, segment 1, and none of the padding, segment 0.
            batch = 1 if key_padding is None else key_padding.shape[0]
            query_ids = jnp.ones((batch, query_length), jnp.int32)
            key_ids = (
                jnp.ones((batch, key_length), jnp.int32)
                if key_padding is None
                else key_padding.astype(jnp.int32)
            )
        if causal:
            dense = dense & (jnp.arange(query_length)[:, None] >= jnp.arange(key_length)[None, :])
        return cls(dense, query_ids.astype(jnp.int32), key_ids.astype(jnp.int32), causal)


def dot_product_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    mask: AttentionMask | None,
    implementation: str,
    dropout: Callable[[jax.Array], jax.Array] | None = None,
) -> jax.Array:
    """softmax(q k^T / sqrt(head_dim)) v over [batch, len, heads, head_dim] arrays.

    [b, q_len, h, d], [b, kv_len, h, d], [b, kv_len, h, d] --> [b, q_len, h, d] in the
    query's dtype. ``implementation`` is resolved (not "auto"). ``dropout``, applied to the
    attention weights, forces the xla path.
    """
    if implementation == "cudnn" and dropout is None:
        return cudnn_attention(query, key, value, mask, "cudnn")
    tiles = splash_block(query.shape[1]) and splash_block(key.shape[1])
    has_ids = mask is not None and mask.query_ids is not None
    if implementation == "splash" and dropout is None and has_ids and tiles:
        return splash_attention(query, key, value, mask)
    return xla_attention(query, key, value, None if mask is None else mask.dense, dropout)


def xla_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    mask: jax.Array | None,
    dropout: Callable[[jax.Array], jax.Array] | None = None,
) -> jax.Array:
    """The reference: scores, mask and softmax in float32 whatever the compute dtype (in
    bfloat16 the small weights of long inputs vanish), both products accumulated in
    float32."""
    head_dim = query.shape[-1]
    scores = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32)
    scores = scores / jnp.sqrt(head_dim).astype(jnp.float32)
    if mask is not None:
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1).astype(query.dtype)
    if dropout is not None:
        weights = dropout(weights)
    attended = jnp.einsum("bhqk,bkhd->bqhd", weights, value, preferred_element_type=jnp.float32)
    return attended.astype(query.dtype)


def cudnn_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    mask: AttentionMask | None,
    kernel: str,
) -> jax.Array:
    """``jax.nn.dot_product_attention`` with ``implementation=kernel``: "cudnn" on a GPU,
    "xla" for JAX's own version of the same call (how the tests run it on a CPU)."""
    return jax.nn.dot_product_attention(
        query,
        key,
        value,
        mask=None if mask is None else mask.dense,
        is_causal=mask is not None and mask.causal,
        implementation=kernel,
    )


def splash_block(length: int) -> int | None:
    """The largest splash block that tiles ``length``, or None."""
    return next((block for block in SPLASH_BLOCKS if length % block == 0), None)


@functools.lru_cache(maxsize=32)
def splash_kernel(
    query_length: int, key_length: int, heads: int, causal: bool, interpret: bool
) -> Callable[..., jax.Array]:
    """The splash kernel for one example of one shape: (query [h, q, d], key [h, kv, d],
    value [h, kv, d], query ids [q], key ids [kv]) --> [h, q, d].

    Cached: building it preprocesses the mask on the host (20-130 ms at 16 heads x 1024),
    which every attention layer of every trace would otherwise redo.
    """
    # Imported here: Pallas pulls in Mosaic, which only this path needs.
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    shape = (query_length, key_length)
    head_mask = splash.CausalMask(shape) if causal else splash.FullMask(shape)
    block_q, block_kv = splash_block(query_length), splash_block(key_length)
    blocks = splash.BlockSizes(
        block_q=block_q,
        block_kv=block_kv,
        block_kv_compute=block_kv,
        block_q_dkv=block_q,
        block_kv_dkv=block_kv,
        block_kv_dkv_compute=block_kv,
        block_q_dq=block_q,
        block_kv_dq=block_kv,
    )
    # Built eagerly even when the first call comes inside a trace: its mask arrays are
    # constants, and a cached kernel must not hold one trace's tracers.
    with jax.ensure_compile_time_eval():
        kernel = splash.make_splash_mha(
            splash.MultiHeadMask([head_mask] * heads),
            block_sizes=blocks,
            head_shards=1,
            q_seq_shards=1,
            interpret=interpret,
        )

    def one_example(query, key, value, query_ids, key_ids):
        return kernel(query, key, value, segment_ids=splash.SegmentIds(query_ids, key_ids))

    return one_example


def splash_attention(
    query: jax.Array, key: jax.Array, value: jax.Array, mask: AttentionMask
) -> jax.Array:
    """The splash kernel, per example, with the mask's segment ids (and causal shape).

    Inside a mesh (``jax.set_mesh``, as the training loop and sharded generation do) it runs
    under ``shard_map`` over the batch axes: XLA cannot partition a Pallas call itself.
    Query rows that are padding come out as some average of values, never read.
    """
    batch, query_length, heads, head_dim = query.shape
    key_length = key.shape[1]
    one_example = splash_kernel(
        query_length, key_length, heads, mask.causal, jax.default_backend() != "tpu"
    )
    mesh = jax.sharding.get_abstract_mesh()
    sharded = not mesh.empty and all(axis in mesh.axis_names for axis in BATCH_AXES)
    head_axis = None
    if sharded and TENSOR_AXIS in mesh.axis_names and heads % mesh.shape[TENSOR_AXIS] == 0:
        head_axis = TENSOR_AXIS

    def per_shard(query, key, value, query_ids, key_ids):
        # The kernel takes one example, heads first: [b, len, h, d] <--> [b, h, len, d].
        heads_first = functools.partial(jnp.swapaxes, axis1=1, axis2=2)
        out = jax.vmap(one_example)(
            heads_first(query), heads_first(key), heads_first(value), query_ids, key_ids
        )
        return heads_first(out)

    # The kernel does not scale the scores: scale the queries (in float32, then back).
    query = (query.astype(jnp.float32) / np.sqrt(head_dim)).astype(query.dtype)
    query_ids = jnp.broadcast_to(mask.query_ids, (batch, query_length))
    key_ids = jnp.broadcast_to(mask.key_ids, (batch, key_length))
    if sharded:
        tokens = PartitionSpec(BATCH_AXES, None, head_axis, None)
        ids = PartitionSpec(BATCH_AXES, None)
        per_shard = jax.shard_map(
            per_shard,
            mesh=mesh,
            in_specs=(tokens, tokens, tokens, ids, ids),
            out_specs=tokens,
            check_vma=False,
        )
    return per_shard(query, key, value, query_ids, key_ids)
