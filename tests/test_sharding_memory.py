"""The per-chip memory table: train state from the real shapes, estimates that add up."""

import dataclasses
import math

import jax
import pytest
from transformers import BartConfig

from kobart_flax import checkpoint
from kobart_flax.config import ModelConfig
from kobart_flax.overrides import apply_overrides, load_config
from scripts import sharding_memory
from scripts.sharding_memory import MODES, V4_HBM_BYTES


@pytest.fixture(scope="module")
def kobart_dir(tmp_path_factory):
    """gogamza/kobart-base-v1's config.json alone (its architecture), as the hub has it."""
    directory = tmp_path_factory.mktemp("kobart-base-v1")
    BartConfig(
        vocab_size=30000,
        d_model=768,
        encoder_layers=6,
        decoder_layers=6,
        encoder_attention_heads=16,
        decoder_attention_heads=16,
        encoder_ffn_dim=3072,
        decoder_ffn_dim=3072,
        max_position_embeddings=1026,
    ).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def kobart_base(kobart_dir):
    config = load_config("configs/kobart_base.py")
    # Offline: the architecture from a local copy of the hub model's config.json.
    config = apply_overrides(config, [f"model.pretrained={kobart_dir}"])
    return sharding_memory.with_model_architecture(config)


@pytest.fixture(scope="module")
def modes(kobart_base):
    return {mode.name: mode for mode in sharding_memory.estimate(kobart_base, 16)}


def kobart_parameter_count(model: ModelConfig) -> int:
    """BART's parameters, counted by hand from its architecture."""
    d, ffn, vocab = model.d_model, model.ffn_dim, model.vocab_size
    attention = 4 * (d * d + d)  # q, k, v, out projections with biases
    feed_forward = d * ffn + ffn + ffn * d + d
    layer_norm = 2 * d
    encoder_layer = attention + feed_forward + 2 * layer_norm
    decoder_layer = 2 * attention + feed_forward + 3 * layer_norm  # self- and cross-attention
    positions = (model.max_position_embeddings + 2) * d  # BART's offset of 2 rows
    per_stack = positions + layer_norm  # layernorm_embedding
    return (
        vocab * d  # the shared embedding, tied to the LM head
        + vocab  # final_logits_bias
        + 2 * per_stack
        + model.encoder_layers * encoder_layer
        + model.decoder_layers * decoder_layer
    )


def test_state_columns_are_the_real_models_float32_params(kobart_base, modes):
    params = checkpoint.abstract_params(sharding_memory.bart_config(kobart_base.model).to_dict())
    count = sum(leaf.size for leaf in jax.tree.leaves(params))
    assert count == kobart_parameter_count(kobart_base.model) == 123_889_968
    replicated = modes["data parallel"]
    assert replicated.params == replicated.grads == 4 * count
    # Adam's two moments, plus its step counters.
    assert 0 <= replicated.opt_state - 2 * 4 * count < 64
    for mode in modes.values():
        assert mode.grads == mode.params  # no accumulation: one float32 gradient per param


def test_fsdp_gathers_the_embedding_and_a_decoder_layer(kobart_base, modes):
    model = kobart_base.model
    d = model.d_model
    embedding = model.vocab_size * d * 4
    # What tensor parallelism splits of a decoder layer: 8 attention kernels, 6 q/k/v biases,
    # fc1 and fc2 kernels, fc1 bias; and what it leaves whole: 2 out_proj biases, fc2's, and
    # 3 LayerNorms' scales and biases.
    tensor_split = 8 * d * d + 6 * d + 2 * d * model.ffn_dim + model.ffn_dim
    whole = 2 * d + d + 6 * d
    decoder_layer = (tensor_split + whole) * 4
    assert modes["data parallel"].gathers == modes["tensor parallel (4 per host)"].gathers == 0
    assert modes["FSDP"].gathers == modes["data x FSDP (4 per host)"].gathers
    assert modes["FSDP"].gathers == embedding + decoder_layer
    # Gathered over fsdp, still split over tensor; the q/k/v and fc1 biases that tensor split
    # are left whole over fsdp (one dimension, taken), so nothing of theirs is gathered.
    kernels = 8 * d * d + 2 * d * model.ffn_dim
    assert modes["FSDP x tensor (4 per host)"].gathers == embedding // 4 + kernels + whole * 4


def test_activation_formula_on_a_model_small_enough_to_count_by_hand():
    model = ModelConfig(
        vocab_size=10, d_model=4, encoder_layers=1, decoder_layers=1, attention_heads=2,
        ffn_dim=8, dropout=0.0, dtype="float32",
    )  # fmt: skip
    # float32 (c = 4), d = 4, h = 2, f = 8, v = 10, no dropout masks; per example:
    # attention(q, k) = q (c d + 2 c d + c d) + k 2 c d + h q k (4 + c) = 64 q + 32 k + 16 q k
    # ffn(n) = n (c d + 2 c f + c d) = 96 n; embed(n) = c d n = 16 n
    encoder = (64 * 2 + 32 * 2 + 16 * 4) + 96 * 2 + 16 * 2  # S = 2
    decoder = (64 + 32 + 16) + (64 + 32 * 2 + 16 * 2) + 96 + 16 + 4 * 2 * 4  # T = 1
    head = 1 * (4 * 4 + (4 + 4 + 4) * 10)
    assert sharding_memory.activation_bytes(model, 3, 2, 1, 1) == 3 * (encoder + decoder + head)
    with_dropout = dataclasses.replace(model, dropout=0.1, dtype="bfloat16")
    halved = sharding_memory.activation_bytes(with_dropout, 3, 2, 1, 1)
    assert halved < 3 * (encoder + decoder + head)  # bfloat16 halves all but float32 scores


def test_kobart_base_at_the_default_batch_fits_a_v4_chip_in_every_mode(kobart_base, modes):
    assert set(modes) == {name for name, _ in MODES}
    for mode in modes.values():
        assert mode.total == (
            mode.params + mode.opt_state + mode.grads + mode.gathers + mode.activations
        )
        assert mode.fits, mode
    # Activations dominate: 32 examples x 512 + 128 tokens per chip.
    replicated = modes["data parallel"]
    assert replicated.rows == 32
    assert replicated.activations > 5 * (replicated.total - replicated.activations)
    # Tensor groups share one batch shard: 4x the examples, a quarter of heads/FFN/vocab each.
    tensor = modes["tensor parallel (4 per host)"]
    assert tensor.rows == 128 and tensor.activations > replicated.activations


def test_the_verdict_turns_when_the_batch_grows(kobart_base, modes):
    big = sharding_memory.estimate(apply_overrides(kobart_base, ["train.batch_size=2048"]), 16)
    for mode in big:
        assert not mode.fits, mode
        # 4x the examples per chip: 4x the activations, the rest unchanged.
        assert mode.activations == 4 * modes[mode.name].activations
        assert mode.total - mode.activations == (
            modes[mode.name].total - modes[mode.name].activations
        )
    assert min(mode.total for mode in big) > V4_HBM_BYTES


def test_memory_report_prints_a_row_per_mode_that_adds_up(kobart_dir, capsys):
    """The command's table for kobart-base on 16 chips (the one docs/pods.md shows): a row per
    mode, in order, whose parts add up and which all fit a v4 chip."""
    assert sharding_memory.main([f"model.pretrained={kobart_dir}"]) == 0
    table = capsys.readouterr().out.strip()
    rows = [line.strip("|").split(" | ") for line in table.splitlines()[2:]]
    assert [row[0].strip() for row in rows] == [name for name, _ in MODES]
    for row in rows:
        sizes = [float(cell.replace(",", "")) for cell in row[3:9]]
        # The printed parts add up to the printed total (each rounded to 0.1 MiB).
        assert math.isclose(sum(sizes[:5]), sizes[5], abs_tol=0.3), row
        assert row[9].startswith("yes")
    # FSDP over 16: the train state is a sixteenth of data parallelism's, plus whole tables.
    state = {row[0].strip(): sum(float(c.replace(",", "")) for c in row[3:6]) for row in rows}
    assert state["FSDP"] < state["data parallel"] / 16 * 1.25
