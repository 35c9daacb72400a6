"""Every attention kernel against the reference xla path, on CPU: cuDNN's call through
``jax.nn.dot_product_attention``'s XLA version, splash through Pallas interpret mode."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_models import tiny_kobart_config

from kobart_flax import FlaxBartForConditionalGeneration, attention, sharding
from kobart_flax.attention import (
    AttentionMask,
    cudnn_attention,
    dot_product_attention,
    resolve,
    splash_attention,
    xla_attention,
)
from kobart_flax.config import Config, ConfigError, validate

HEADS, HEAD_DIM = 3, 16
# Splash tiles lengths in blocks of 128: a decoder of 128 positions against a source of 256.
TARGET, SOURCE = 128, 256


def random_heads(seed: int, batch: int, length: int) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), (batch, length, HEADS, HEAD_DIM))


def padding(lengths: list[int], length: int) -> jax.Array:
    """[batch, length] 1 for the first ``lengths[i]`` tokens of row i, then 0."""
    return jnp.asarray(np.arange(length)[None, :] < np.asarray(lengths)[:, None], jnp.int32)


def packed(segment_lengths: list[list[int]], length: int) -> jax.Array:
    """[batch, length] segment ids 1, 2, ... of the given lengths, then padding 0."""
    rows = []
    for lengths in segment_lengths:
        ids = np.concatenate([np.full(n, index + 1) for index, n in enumerate(lengths)])
        rows.append(np.pad(ids, (0, length - len(ids))))
    return jnp.asarray(np.stack(rows), jnp.int32)


# (name, AttentionMask, query length, key length, [batch, q_len] query rows that are real)
def mask_cases():
    source_padding = padding([SOURCE, 200], SOURCE)
    target_padding = padding([TARGET, 70], TARGET)
    source_segments = packed([[100, 90, 60], [256]], SOURCE)
    target_segments = packed([[50, 40, 30], [128]], TARGET)
    everything = jnp.ones((2, TARGET), bool)
    return [
        (
            "encoder, padded",
            AttentionMask.build(None, None, source_padding, False, SOURCE, SOURCE),
            SOURCE,
            SOURCE,
            jnp.ones((2, SOURCE), bool),
        ),
        (
            "decoder, causal and padded",
            AttentionMask.build(None, None, target_padding, True, TARGET, TARGET),
            TARGET,
            TARGET,
            everything,
        ),
        (
            "cross attention, padded source",
            AttentionMask.build(None, None, source_padding, False, TARGET, SOURCE),
            TARGET,
            SOURCE,
            everything,
        ),
        (
            "encoder, packed",
            AttentionMask.build(
                source_segments, source_segments, source_segments > 0, False, SOURCE, SOURCE
            ),
            SOURCE,
            SOURCE,
            source_segments > 0,
        ),
        (
            "decoder, packed and causal",
            AttentionMask.build(
                target_segments, target_segments, target_segments > 0, True, TARGET, TARGET
            ),
            TARGET,
            TARGET,
            target_segments > 0,
        ),
        (
            "cross attention, packed",
            AttentionMask.build(
                target_segments, source_segments, source_segments > 0, False, TARGET, SOURCE
            ),
            TARGET,
            SOURCE,
            target_segments > 0,
        ),
    ]


CASES = mask_cases()


def inputs(query_length: int, key_length: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    return (
        random_heads(0, 2, query_length),
        random_heads(1, 2, key_length),
        random_heads(2, 2, key_length),
    )


def reference(query, key, value, mask: AttentionMask) -> np.ndarray:
    return np.asarray(xla_attention(query, key, value, mask.dense))


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_cudnns_call_equals_the_reference(case):
    _, mask, query_length, key_length, real = case
    query, key, value = inputs(query_length, key_length)
    # implementation="xla": the same jax.nn.dot_product_attention call, computed by JAX.
    out = np.asarray(cudnn_attention(query, key, value, mask, "xla"))
    np.testing.assert_allclose(
        out[np.asarray(real)], reference(query, key, value, mask)[np.asarray(real)], atol=2e-6
    )


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_splash_equals_the_reference_on_real_query_rows(case):
    _, mask, query_length, key_length, real = case
    query, key, value = inputs(query_length, key_length)
    out = np.asarray(jax.jit(splash_attention)(query, key, value, mask))
    np.testing.assert_allclose(
        out[np.asarray(real)], reference(query, key, value, mask)[np.asarray(real)], atol=2e-6
    )


def test_splash_gradients_equal_the_references():
    _, mask, query_length, key_length, real = CASES[4]  # packed and causal
    query, key, value = inputs(query_length, key_length)
    weights = jnp.asarray(real, jnp.float32)[:, :, None, None]

    def loss(attend):
        return lambda q, k, v: jnp.sum(attend(q, k, v, mask) ** 2 * weights)

    splash_grads = jax.jit(jax.grad(loss(splash_attention), argnums=(0, 1, 2)))(query, key, value)
    xla_grads = jax.grad(
        loss(lambda q, k, v, m: xla_attention(q, k, v, m.dense)), argnums=(0, 1, 2)
    )(query, key, value)
    for got, expected in zip(splash_grads, xla_grads, strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5)


def test_splash_on_a_two_device_mesh_equals_one_device():
    _, mask, query_length, key_length, _ = CASES[3]  # packed encoder
    query, key, value = inputs(query_length, key_length)
    mesh = sharding.make_data_mesh()
    assert mesh.devices.size == 2
    rows = sharding.batch_sharding(mesh)
    placed = [jax.device_put(array, rows) for array in (query, key, value)]
    with jax.set_mesh(mesh):
        compiled = jax.jit(splash_attention).lower(*placed, mask).compile()
    # shard_map: each device runs the kernel on its own rows, no gathering of the batch.
    assert "all-gather" not in compiled.as_text()
    sharded = compiled(*placed, mask)
    np.testing.assert_array_equal(
        np.asarray(sharded), np.asarray(jax.jit(splash_attention)(query, key, value, mask))
    )


def test_lengths_splash_cannot_tile_run_the_reference():
    mask = AttentionMask.build(None, None, padding([40, 33], 40), True, 40, 40)
    query, key, value = inputs(40, 40)
    np.testing.assert_array_equal(
        np.asarray(dot_product_attention(query, key, value, mask, "splash")),
        reference(query, key, value, mask),
    )


def test_attention_dropout_runs_the_reference():
    _, mask, query_length, key_length, _ = CASES[0]
    query, key, value = inputs(query_length, key_length)

    def halve(weights):
        return weights * 0.5

    for implementation in ("splash", "cudnn"):
        np.testing.assert_array_equal(
            np.asarray(dot_product_attention(query, key, value, mask, implementation, halve)),
            np.asarray(xla_attention(query, key, value, mask.dense, halve)),
        )


@pytest.mark.parametrize(
    "platform, dtype, expected",
    [
        ("gpu", jnp.bfloat16, "cudnn"),
        ("gpu", jnp.float16, "cudnn"),
        ("gpu", jnp.float32, "xla"),  # cuDNN's fused attention takes 16-bit inputs only
        ("tpu", jnp.float32, "splash"),
        ("tpu", jnp.bfloat16, "splash"),
        ("cpu", jnp.bfloat16, "xla"),
    ],
)
def test_auto_picks_the_platforms_kernel(platform, dtype, expected):
    assert resolve("auto", dtype, platform) == expected
    assert resolve("xla", dtype, platform) == "xla"


def test_an_unknown_kernel_is_a_config_error():
    config = Config()
    config.model.attention = "flash"
    with pytest.raises(ConfigError, match=r"model\.attention='flash': must be one of"):
        validate(config)
    with pytest.raises(ValueError, match="flash"):
        resolve("flash", jnp.float32)


@pytest.fixture(scope="module")
def tiny_model():
    config = tiny_kobart_config(300)
    return FlaxBartForConditionalGeneration(config, seed=4, attention="xla")


def batch_of(seed: int) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    return {
        "input_ids": jnp.asarray(rng.integers(4, 300, (2, SOURCE)), jnp.int32),
        "attention_mask": padding([SOURCE, 150], SOURCE),
        "decoder_input_ids": jnp.asarray(rng.integers(4, 300, (2, TARGET)), jnp.int32),
        "decoder_attention_mask": padding([TARGET, 60], TARGET),
    }


@pytest.fixture
def kernel_calls(monkeypatch) -> collections.Counter:
    """How often the model reached each fused kernel (cuDNN's call computed by JAX: there is
    no GPU here), so a silent fallback to xla cannot pass for the kernel."""
    calls = collections.Counter()
    splash = attention.splash_attention

    def counted_splash(*args):
        calls["splash"] += 1
        return splash(*args)

    def counted_cudnn(query, key, value, mask, kernel):
        calls["cudnn"] += 1
        return cudnn_attention(query, key, value, mask, "xla")

    monkeypatch.setattr(attention, "splash_attention", counted_splash)
    monkeypatch.setattr(attention, "cudnn_attention", counted_cudnn)
    return calls


@pytest.mark.parametrize("implementation", ["splash", "cudnn"])
def test_the_model_gives_the_same_logits_with_each_kernel(tiny_model, implementation, kernel_calls):
    batch = batch_of(0)
    expected = tiny_model.module.apply({"params": tiny_model.params}, **batch)
    module = tiny_model.module.clone(attention=implementation)
    got = jax.jit(module.apply)({"params": tiny_model.params}, **batch)
    # Every attention of the 1+1 layers: encoder self, decoder self, cross.
    assert kernel_calls[implementation] == 3
    real = np.asarray(batch["decoder_attention_mask"], bool)
    np.testing.assert_allclose(np.asarray(got)[real], np.asarray(expected)[real], atol=1e-4)


def test_splash_beam_search_gives_the_references_tokens(tiny_model):
    batch = batch_of(1)
    source = batch["input_ids"][:, :128], batch["attention_mask"][:, :128]
    settings = dict(num_beams=4, max_length=12)
    expected = tiny_model.generate(*source, **settings).sequences
    splash_model = FlaxBartForConditionalGeneration(
        tiny_model.config, params=tiny_model.params, attention="splash"
    )
    assert splash_model.attention == "splash"
    np.testing.assert_array_equal(
        np.asarray(splash_model.generate(*source, **settings).sequences), np.asarray(expected)
    )
