"""BART as KoBART uses it, written in Flax linen.

The parameter tree mirrors transformers 4.x ``FlaxBartForConditionalGeneration``
exactly (``model/shared/embedding``, ``model/encoder/layers/0/self_attn/q_proj/kernel``,
``final_logits_bias``, ...), so ``flax_model.msgpack`` files from the hub load unchanged
and the PyTorch name table in ``hf_io`` is a plain rename + transpose.

Linen rather than nnx: the HF tree is a linen variable dict, the decoder KV cache is a
linen ``cache`` collection that generation code threads through ``apply``, and the
train state stays a pytree of plain arrays that ``jax.jit`` shardings and Orbax handle
directly.

Masks are :class:`kobart_flax.attention.AttentionMask` s: a boolean ``[batch, 1, q_len,
kv_len]`` array (True = may attend) and the segment ids the splash kernel reads. Packed rows
are supported through per-token segment ids: tokens only see tokens of their own
segment, and positions restart at every segment start. ``attention`` names the kernel
(:mod:`kobart_flax.attention`); in bfloat16, attention scores, LayerNorm statistics and the
logits stay float32.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from kobart_flax.attention import AttentionMask, dot_product_attention
from kobart_flax.positions import POSITION_OFFSET

LAYER_NORM_EPS = 1e-5

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "gelu_new": lambda x: nn.gelu(x, approximate=True),
    "relu": nn.relu,
    "silu": nn.silu,
    "swish": nn.silu,
    "tanh": jnp.tanh,
}


@dataclasses.dataclass(frozen=True)
class BartSpec:
    """The architecture fields of a transformers ``BartConfig`` that the module needs.

    A frozen dataclass (hashable, no transformers import) so the module can be rebuilt
    from a checkpoint's metadata and used as a static jit argument.
    """

    vocab_size: int
    d_model: int
    encoder_layers: int
    decoder_layers: int
    encoder_attention_heads: int
    decoder_attention_heads: int
    encoder_ffn_dim: int
    decoder_ffn_dim: int
    max_position_embeddings: int
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    activation_function: str = "gelu"
    scale_embedding: bool = False
    init_std: float = 0.02

    @classmethod
    def from_hf_config(cls, config) -> BartSpec:
        return cls(**{field.name: getattr(config, field.name) for field in dataclasses.fields(cls)})


def positions_from_segments(segment_ids: jax.Array) -> jax.Array:
    """Positions that restart at 0 at the first token of every segment.

    [batch, length] int --> [batch, length] int. Padding (segment 0) gets positions too;
    they are never attended to, so their values do not matter.
    """
    length = segment_ids.shape[-1]
    index = jnp.broadcast_to(jnp.arange(length), segment_ids.shape)
    is_start = jnp.concatenate(
        [jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1
    )
    segment_start = jax.lax.cummax(jnp.where(is_start, index, 0), axis=1)
    return index - segment_start


class BartAttention(nn.Module):
    embed_dim: int
    num_heads: int
    dropout: float
    init_std: float
    dtype: jnp.dtype = jnp.float32
    attention: str = "xla"  # a resolved kobart_flax.attention implementation

    @nn.compact
    def __call__(
        self,
        hidden_states: jax.Array,
        key_value_states: jax.Array | None = None,
        mask: AttentionMask | None = None,
        deterministic: bool = True,
        decode: bool = False,
        cache_length: int | None = None,
    ) -> jax.Array:
        head_dim = self.embed_dim // self.num_heads

        def projection(name: str) -> nn.Dense:
            return nn.Dense(
                self.embed_dim,
                dtype=self.dtype,
                kernel_init=nn.initializers.normal(self.init_std),
                name=name,
            )

        def split_heads(x: jax.Array) -> jax.Array:
            # [batch, length, embed] --> [batch, length, heads, head_dim]
            return x.reshape(x.shape[:2] + (self.num_heads, head_dim))

        def project_keys_and_values(source: jax.Array) -> tuple[jax.Array, jax.Array]:
            return split_heads(projection("k_proj")(source)), split_heads(
                projection("v_proj")(source)
            )

        query = split_heads(projection("q_proj")(hidden_states))
        if key_value_states is None:
            key, value = project_keys_and_values(hidden_states)
            if decode:
                key, value, mask = self._extend_cache(key, value, mask, cache_length)
        elif decode:
            # The encoder output is fixed during decoding: project it once, not every step.
            if self.has_variable("cache", "cross_key"):
                # Stored [batch, heads, head_dim, source]: the layout the per-step dots read.
                key = self.get_variable("cache", "cross_key").transpose(0, 3, 1, 2)
                value = self.get_variable("cache", "cross_value").transpose(0, 3, 1, 2)
            else:
                key, value = project_keys_and_values(key_value_states)
                stored = jax.lax.optimization_barrier(
                    (key.transpose(0, 2, 3, 1), value.transpose(0, 2, 3, 1))
                )
                self.put_variable("cache", "cross_key", stored[0])
                self.put_variable("cache", "cross_value", stored[1])
        else:
            key, value = project_keys_and_values(key_value_states)

        rows, query_length = query.shape[:2]
        sources = key.shape[0]
        if rows != sources:
            # Beam search: each source's beams are consecutive rows and read the same keys,
            # so fold them into the query length and keep one copy of the source per article.
            # [sources * beams, q, heads, head_dim] --> [sources, beams * q, heads, head_dim]
            query = query.reshape((sources, -1) + query.shape[2:])

        dropout = None
        if not deterministic and self.dropout > 0.0:

            def dropout(weights: jax.Array) -> jax.Array:
                return nn.Dropout(self.dropout)(weights, deterministic=False)

        # Decode steps read a cache one query at a time: the fused kernels save nothing.
        implementation = "xla" if decode else self.attention
        attended = dot_product_attention(query, key, value, mask, implementation, dropout)
        # [batch, length, heads, head_dim] --> [rows, length, embed], beams unfolded again
        attended = attended.reshape((rows, query_length, self.embed_dim))
        return projection("out_proj")(attended)

    def _extend_cache(
        self,
        key: jax.Array,
        value: jax.Array,
        mask: AttentionMask | None,
        cache_length: int | None,
    ) -> tuple[jax.Array, jax.Array, AttentionMask | None]:
        """Write this step's keys/values into the cache; attend to everything written so far.

        The first decode call creates the cache, ``cache_length`` long (default: as long as
        that call's input), and writes nothing. ``mask`` (if given) is a key padding mask
        over the full cache length.
        """
        is_initialized = self.has_variable("cache", "cached_key")
        # Stored [batch, heads, head_dim, cache_length], the layout the per-step dots read
        # (as for the cross-attention cache): stored [batch, length, heads, head_dim], XLA
        # relayouts the whole cache in every decode step.
        batch, step_length, heads, head_dim = key.shape
        shape = (batch, heads, head_dim, cache_length or step_length)
        cached_key = self.variable("cache", "cached_key", jnp.zeros, shape, key.dtype)
        cached_value = self.variable("cache", "cached_value", jnp.zeros, shape, value.dtype)
        cache_index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
        if not is_initialized:
            return key, value, mask

        max_length = cached_key.value.shape[-1]
        start = cache_index.value
        # [batch, step, heads, head_dim] <--> [batch, heads, head_dim, step]
        cached_key.value = jax.lax.dynamic_update_slice_in_dim(
            cached_key.value, key.transpose(0, 2, 3, 1), start, axis=3
        )
        cached_value.value = jax.lax.dynamic_update_slice_in_dim(
            cached_value.value, value.transpose(0, 2, 3, 1), start, axis=3
        )
        cache_index.value = start + step_length
        full_key = cached_key.value.transpose(0, 3, 1, 2)
        full_value = cached_value.value.transpose(0, 3, 1, 2)

        query_positions = start + jnp.arange(step_length)
        causal = query_positions[:, None] >= jnp.arange(max_length)[None, :]
        step_mask = causal[None, None, :, :]
        if mask is not None:
            step_mask = step_mask & mask.dense
        return full_key, full_value, AttentionMask(step_mask)


class BartEncoderLayer(nn.Module):
    spec: BartSpec
    dtype: jnp.dtype = jnp.float32
    attention: str = "xla"

    @nn.compact
    def __call__(
        self, hidden_states: jax.Array, mask: AttentionMask, deterministic: bool
    ) -> jax.Array:
        spec = self.spec
        attention = BartAttention(
            spec.d_model,
            spec.encoder_attention_heads,
            spec.attention_dropout,
            spec.init_std,
            self.dtype,
            self.attention,
            name="self_attn",
        )
        attended = attention(hidden_states, mask=mask, deterministic=deterministic)
        hidden_states = add_and_norm(
            spec, self.dtype, hidden_states, attended, "self_attn_layer_norm", deterministic
        )
        return feed_forward(spec, spec.encoder_ffn_dim, self.dtype, hidden_states, deterministic)


class BartDecoderLayer(nn.Module):
    spec: BartSpec
    dtype: jnp.dtype = jnp.float32
    attention: str = "xla"

    @nn.compact
    def __call__(
        self,
        hidden_states: jax.Array,
        encoder_hidden_states: jax.Array,
        self_mask: AttentionMask | None,
        cross_mask: AttentionMask,
        deterministic: bool,
        decode: bool,
        cache_length: int | None,
    ) -> jax.Array:
        spec = self.spec

        def attention(name: str) -> BartAttention:
            return BartAttention(
                spec.d_model,
                spec.decoder_attention_heads,
                spec.attention_dropout,
                spec.init_std,
                self.dtype,
                self.attention,
                name=name,
            )

        attended = attention("self_attn")(
            hidden_states,
            mask=self_mask,
            deterministic=deterministic,
            decode=decode,
            cache_length=cache_length,
        )
        hidden_states = add_and_norm(
            spec, self.dtype, hidden_states, attended, "self_attn_layer_norm", deterministic
        )
        attended = attention("encoder_attn")(
            hidden_states,
            encoder_hidden_states,
            mask=cross_mask,
            deterministic=deterministic,
            decode=decode,
        )
        hidden_states = add_and_norm(
            spec, self.dtype, hidden_states, attended, "encoder_attn_layer_norm", deterministic
        )
        return feed_forward(spec, spec.decoder_ffn_dim, self.dtype, hidden_states, deterministic)


# The two helpers below run inside a layer's compact ``__call__``, so the modules they
# create (fc1, fc2, the LayerNorms) belong to that layer, as in transformers' tree.


def add_and_norm(
    spec: BartSpec,
    dtype: jnp.dtype,
    residual: jax.Array,
    update: jax.Array,
    norm_name: str,
    deterministic: bool,
) -> jax.Array:
    """Dropout on the sub-layer output, residual add, then LayerNorm (BART is post-LN)."""
    update = nn.Dropout(spec.dropout)(update, deterministic=deterministic)
    return layer_norm(norm_name, dtype)(residual + update)


def feed_forward(
    spec: BartSpec, ffn_dim: int, dtype: jnp.dtype, hidden_states: jax.Array, deterministic: bool
) -> jax.Array:
    dense_init = nn.initializers.normal(spec.init_std)
    update = nn.Dense(ffn_dim, dtype, kernel_init=dense_init, name="fc1")(hidden_states)
    update = ACTIVATIONS[spec.activation_function](update)
    update = nn.Dropout(spec.activation_dropout)(update, deterministic=deterministic)
    update = nn.Dense(spec.d_model, dtype, kernel_init=dense_init, name="fc2")(update)
    return add_and_norm(spec, dtype, hidden_states, update, "final_layer_norm", deterministic)


def layer_norm(name: str, dtype: jnp.dtype) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=LAYER_NORM_EPS, dtype=dtype, name=name)


class LayerStack(nn.Module):
    """Holds layers under the names "0", "1", ... exactly as transformers' Flax BART."""

    layer_class: type[nn.Module]
    num_layers: int
    spec: BartSpec
    dtype: jnp.dtype = jnp.float32
    attention: str = "xla"

    @nn.compact
    def __call__(self, hidden_states: jax.Array, *args) -> jax.Array:
        for index in range(self.num_layers):
            layer = self.layer_class(self.spec, self.dtype, self.attention, name=str(index))
            hidden_states = layer(hidden_states, *args)
        return hidden_states


class BartEncoder(nn.Module):
    spec: BartSpec
    embed_tokens: nn.Embed
    dtype: jnp.dtype = jnp.float32
    attention: str = "xla"

    @nn.compact
    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        segment_ids: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        spec = self.spec
        if position_ids is None:
            position_ids = (
                positions_from_segments(segment_ids)
                if segment_ids is not None
                else jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
            )
        hidden_states = embed(spec, self.embed_tokens, input_ids, position_ids, self.dtype)
        hidden_states = layer_norm("layernorm_embedding", self.dtype)(hidden_states)
        hidden_states = nn.Dropout(spec.dropout)(hidden_states, deterministic=deterministic)

        length = input_ids.shape[1]
        mask = AttentionMask.build(
            segment_ids,
            segment_ids,
            attention_mask,
            causal=False,
            query_length=length,
            key_length=length,
        )
        layers = LayerStack(
            BartEncoderLayer, spec.encoder_layers, spec, self.dtype, self.attention, name="layers"
        )
        return layers(hidden_states, mask, deterministic)


class BartDecoder(nn.Module):
    spec: BartSpec
    embed_tokens: nn.Embed
    dtype: jnp.dtype = jnp.float32
    attention: str = "xla"

    @nn.compact
    def __call__(
        self,
        decoder_input_ids: jax.Array,
        encoder_hidden_states: jax.Array,
        encoder_attention_mask: jax.Array,
        decoder_attention_mask: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        encoder_segment_ids: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        deterministic: bool = True,
        decode: bool = False,
        cache_length: int | None = None,
    ) -> jax.Array:
        spec = self.spec
        query_length = decoder_input_ids.shape[1]
        if position_ids is None:
            if decode:
                raise ValueError("decode=True needs explicit decoder position_ids")
            position_ids = (
                positions_from_segments(segment_ids)
                if segment_ids is not None
                else jnp.broadcast_to(jnp.arange(query_length), decoder_input_ids.shape)
            )
        hidden_states = embed(spec, self.embed_tokens, decoder_input_ids, position_ids, self.dtype)
        hidden_states = layer_norm("layernorm_embedding", self.dtype)(hidden_states)
        hidden_states = nn.Dropout(spec.dropout)(hidden_states, deterministic=deterministic)

        if decode:
            # The attention module adds the causal part against its cache; here only the
            # key padding over the full cache length, if the caller tracks one.
            self_mask = (
                None
                if decoder_attention_mask is None
                else AttentionMask(decoder_attention_mask.astype(bool)[:, None, None, :])
            )
        else:
            self_mask = AttentionMask.build(
                segment_ids,
                segment_ids,
                decoder_attention_mask,
                causal=True,
                query_length=query_length,
                key_length=query_length,
            )
        cross_mask = AttentionMask.build(
            segment_ids,
            encoder_segment_ids,
            encoder_attention_mask,
            causal=False,
            query_length=query_length,
            key_length=encoder_hidden_states.shape[1],
        )
        layers = LayerStack(
            BartDecoderLayer, spec.decoder_layers, spec, self.dtype, self.attention, name="layers"
        )
        return layers(
            hidden_states,
            encoder_hidden_states,
            self_mask,
            cross_mask,
            deterministic,
            decode,
            cache_length,
        )


def embed(
    spec: BartSpec,
    embed_tokens: nn.Embed,
    token_ids: jax.Array,
    position_ids: jax.Array,
    dtype: jnp.dtype,
) -> jax.Array:
    """Token embedding (optionally scaled) plus learned positions with BART's offset."""
    positions = nn.Embed(
        spec.max_position_embeddings + POSITION_OFFSET,
        spec.d_model,
        embedding_init=nn.initializers.normal(spec.init_std),
        dtype=dtype,
        name="embed_positions",
    )
    scale = jnp.sqrt(spec.d_model).astype(dtype) if spec.scale_embedding else 1.0
    return embed_tokens(token_ids) * scale + positions(position_ids + POSITION_OFFSET)


class BartModule(nn.Module):
    spec: BartSpec
    dtype: jnp.dtype = jnp.float32
    attention: str = "xla"

    def setup(self):
        self.shared = nn.Embed(
            self.spec.vocab_size,
            self.spec.d_model,
            embedding_init=nn.initializers.normal(self.spec.init_std),
            dtype=self.dtype,
        )
        self.encoder = BartEncoder(self.spec, self.shared, self.dtype, self.attention)
        self.decoder = BartDecoder(self.spec, self.shared, self.dtype, self.attention)


class BartForConditionalGenerationModule(nn.Module):
    """BART encoder-decoder with the LM head tied to the shared token embedding.

    Call it with ``method=`` ``__call__`` (training), ``encode`` or ``decode`` (generation).
    """

    spec: BartSpec
    dtype: jnp.dtype = jnp.float32
    attention: str = "xla"  # a resolved kobart_flax.attention implementation

    def setup(self):
        self.model = BartModule(self.spec, self.dtype, self.attention)
        self.final_logits_bias = self.param(
            "final_logits_bias", nn.initializers.zeros, (1, self.spec.vocab_size)
        )

    def encode(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        segment_ids: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        """[batch, source_len] ids --> [batch, source_len, d_model] hidden states."""
        return self.model.encoder(
            input_ids, attention_mask, segment_ids, position_ids, deterministic
        )

    def decode(
        self,
        decoder_input_ids: jax.Array,
        encoder_hidden_states: jax.Array,
        encoder_attention_mask: jax.Array,
        decoder_attention_mask: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        encoder_segment_ids: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        deterministic: bool = True,
        decode: bool = False,
        cache_length: int | None = None,
    ) -> jax.Array:
        """[batch, target_len] ids --> [batch, target_len, vocab] logits.

        With ``decode=True`` the decoder reads and extends the ``cache`` collection: the
        first such call creates it (self-attention caches ``cache_length`` long, and the
        projected encoder output for cross-attention); later calls feed one step each.
        """
        hidden_states = self.model.decoder(
            decoder_input_ids,
            encoder_hidden_states,
            encoder_attention_mask,
            decoder_attention_mask,
            segment_ids,
            encoder_segment_ids,
            position_ids,
            deterministic,
            decode,
            cache_length,
        )
        # The LM head in float32 (accumulated and returned): in bfloat16 the logits of
        # 30,000 tokens lose the differences that softmax and beam search rank by.
        embedding = self.model.shared.embedding
        logits = jnp.dot(
            hidden_states,
            embedding.astype(hidden_states.dtype).T,
            preferred_element_type=jnp.float32,
        )
        return logits + self.final_logits_bias

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        decoder_input_ids: jax.Array,
        decoder_attention_mask: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        decoder_segment_ids: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        decoder_position_ids: jax.Array | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        encoder_hidden_states = self.encode(
            input_ids, attention_mask, segment_ids, position_ids, deterministic
        )
        return self.decode(
            decoder_input_ids,
            encoder_hidden_states,
            attention_mask,
            decoder_attention_mask,
            decoder_segment_ids,
            segment_ids,
            decoder_position_ids,
            deterministic,
        )
