"""The Flax BART against transformers' PyTorch BART, on tiny random weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import serialization, traverse_util
from tiny_models import tiny_bart_config
from transformers import BartConfig, BartForConditionalGeneration, BartModel

from kobart_flax import FlaxBartForConditionalGeneration
from kobart_flax.hf_io import WeightLoadError, flax_to_state_dict
from kobart_flax.modeling import positions_from_segments

PAD = 3


def tiny_config(**overrides) -> BartConfig:
    # Dropout in attention too, so the train-mode test sees every dropout site.
    return tiny_bart_config(97, **{"attention_dropout": 0.1, **overrides})


@pytest.fixture(scope="module")
def torch_model() -> BartForConditionalGeneration:
    torch.manual_seed(0)
    model = BartForConditionalGeneration(tiny_config()).eval()
    with torch.no_grad():
        # Non-zero LM head bias and LayerNorm params, so a dropped tensor cannot hide.
        model.final_logits_bias.normal_(0.0, 0.5)
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(torch.randn_like(param) * 0.1)
    return model


@pytest.fixture(scope="module")
def saved_dir(torch_model, tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_bart")
    torch_model.save_pretrained(directory)
    return directory


def padded_batch():
    """Two sources and targets of different lengths, right-padded with <pad>."""
    rng = np.random.default_rng(0)
    input_ids = rng.integers(4, 97, size=(2, 11))
    attention_mask = np.ones_like(input_ids)
    input_ids[1, 7:] = PAD
    attention_mask[1, 7:] = 0
    decoder_input_ids = rng.integers(4, 97, size=(2, 6))
    decoder_input_ids[:, 0] = 1
    decoder_attention_mask = np.ones_like(decoder_input_ids)
    decoder_input_ids[0, 4:] = PAD
    decoder_attention_mask[0, 4:] = 0
    return input_ids, attention_mask, decoder_input_ids, decoder_attention_mask


def torch_logits(model, input_ids, attention_mask, decoder_input_ids, decoder_attention_mask):
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(input_ids),
            attention_mask=torch.tensor(attention_mask),
            decoder_input_ids=torch.tensor(decoder_input_ids),
            decoder_attention_mask=torch.tensor(decoder_attention_mask),
        )
    return out.logits.numpy()


def assert_close_to_pytorch(logits, torch_model, batch, atol=1e-4):
    expected = torch_logits(torch_model, *batch)
    valid = batch[3].astype(bool)  # padded target positions carry no meaning
    got = np.asarray(logits, np.float32)
    np.testing.assert_allclose(got[valid], expected[valid], atol=atol, rtol=0)


def assert_logits_match(flax_model, torch_model, atol=1e-4):
    batch = padded_batch()
    assert_close_to_pytorch(flax_model(*batch).logits, torch_model, batch, atol)


def test_safetensors_checkpoint_gives_pytorch_logits(torch_model, saved_dir):
    assert (saved_dir / "model.safetensors").is_file()
    model = FlaxBartForConditionalGeneration.from_pretrained(saved_dir)
    assert model.config.d_model == 32
    assert_logits_match(model, torch_model)


def test_pytorch_bin_checkpoint_gives_pytorch_logits(torch_model, saved_dir, tmp_path):
    torch.save(torch_model.state_dict(), tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text((saved_dir / "config.json").read_text())
    model = FlaxBartForConditionalGeneration.from_pretrained(tmp_path)
    assert_logits_match(model, torch_model)


def test_bart_model_checkpoint_without_lm_head_loads(tmp_path):
    """gogamza/kobart-base-v1 is a BartModel: no ``model.`` prefix, no final_logits_bias."""
    torch.manual_seed(1)
    base = BartModel(tiny_config()).eval()
    base.save_pretrained(tmp_path)
    model = FlaxBartForConditionalGeneration.from_pretrained(tmp_path)
    reference = BartForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert_logits_match(model, reference)
    assert not np.asarray(model.params["final_logits_bias"]).any()


def test_flax_msgpack_loads_unchanged(torch_model, saved_dir, tmp_path):
    reference = FlaxBartForConditionalGeneration.from_pretrained(saved_dir)
    (tmp_path / "flax_model.msgpack").write_bytes(serialization.to_bytes(reference.params))
    (tmp_path / "config.json").write_text((saved_dir / "config.json").read_text())
    model = FlaxBartForConditionalGeneration.from_pretrained(tmp_path)
    assert_logits_match(model, torch_model)


def test_parameter_tree_matches_transformers_flax_names():
    params = FlaxBartForConditionalGeneration(tiny_config()).params
    paths = {"/".join(path) for path in traverse_util.flatten_dict(params)}
    attention = [f"{p}_proj/{leaf}" for p in "qkvo" for leaf in ("kernel", "bias")]
    attention = [name.replace("o_proj", "out_proj") for name in attention]
    dense_and_norms = [
        "fc1/kernel",
        "fc1/bias",
        "fc2/kernel",
        "fc2/bias",
        "final_layer_norm/scale",
        "final_layer_norm/bias",
    ]
    expected = {"final_logits_bias", "model/shared/embedding"}
    for stack in ("encoder", "decoder"):
        expected |= {
            f"model/{stack}/embed_positions/embedding",
            f"model/{stack}/layernorm_embedding/scale",
            f"model/{stack}/layernorm_embedding/bias",
        }
        blocks = ["self_attn"] + (["encoder_attn"] if stack == "decoder" else [])
        for layer in ("0", "1"):
            prefix = f"model/{stack}/layers/{layer}"
            expected |= {f"{prefix}/{name}" for name in dense_and_norms}
            for block in blocks:
                expected |= {f"{prefix}/{block}/{name}" for name in attention}
                expected |= {f"{prefix}/{block}_layer_norm/{leaf}" for leaf in ("scale", "bias")}
    assert paths == expected
    # Positions keep BART's two reserved rows.
    assert params["model"]["encoder"]["embed_positions"]["embedding"].shape == (64 + 2, 32)
    assert params["final_logits_bias"].shape == (1, 97)


def test_export_mapping_round_trips_the_pytorch_state_dict(torch_model, saved_dir):
    model = FlaxBartForConditionalGeneration.from_pretrained(saved_dir)
    exported = flax_to_state_dict(model.params)
    original = {name: t.numpy() for name, t in torch_model.state_dict().items()}
    assert set(exported) == set(original)
    for name, tensor in original.items():
        np.testing.assert_array_equal(exported[name], tensor, err_msg=name)


def test_shape_mismatch_names_the_tensor(saved_dir, tmp_path):
    wrong = BartForConditionalGeneration(tiny_config(encoder_ffn_dim=40))
    wrong.save_pretrained(tmp_path)
    # A config claiming the original sizes, with weights of another shape.
    (tmp_path / "config.json").write_text((saved_dir / "config.json").read_text())
    with pytest.raises(WeightLoadError, match=r"fc1\.(weight|bias): checkpoint shape \(40"):
        FlaxBartForConditionalGeneration.from_pretrained(tmp_path)


def test_directory_without_weights_is_a_clear_error(saved_dir, tmp_path):
    (tmp_path / "config.json").write_text((saved_dir / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="no weights file"):
        FlaxBartForConditionalGeneration.from_pretrained(tmp_path)


def test_decoder_kv_cache_matches_full_forward(saved_dir):
    model = FlaxBartForConditionalGeneration.from_pretrained(saved_dir)
    module, params = model.module, model.params
    input_ids, attention_mask, decoder_input_ids, _ = padded_batch()
    decoder_input_ids = decoder_input_ids.copy()
    decoder_input_ids[0, 4:] = 9  # no padding: every step is real
    full = module.apply({"params": params}, input_ids, attention_mask, decoder_input_ids)

    encoded = module.apply({"params": params}, input_ids, attention_mask, method=module.encode)
    batch, length = decoder_input_ids.shape
    # The first decode call creates the cache with the real params: empty self-attention
    # caches of the full length, and the projected encoder output for cross-attention.
    _, variables = module.apply(
        {"params": params},
        decoder_input_ids[:, :1],
        encoded,
        attention_mask,
        position_ids=jnp.zeros((batch, 1), jnp.int32),
        decode=True,
        cache_length=length,
        method=module.decode,
        mutable=["cache"],
    )
    cache = variables["cache"]
    steps = []
    for step in range(length):
        logits, mutated = module.apply(
            {"params": params, "cache": cache},
            decoder_input_ids[:, step : step + 1],
            encoded,
            attention_mask,
            position_ids=jnp.full((batch, 1), step, jnp.int32),
            decode=True,
            method=module.decode,
            mutable=["cache"],
        )
        cache = mutated["cache"]
        steps.append(logits)
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5)


def test_packed_segments_do_not_see_each_other(saved_dir):
    model = FlaxBartForConditionalGeneration.from_pretrained(saved_dir)
    module, params = model.module, model.params
    rng = np.random.default_rng(1)
    sources = [rng.integers(4, 97, size=5), rng.integers(4, 97, size=4)]
    targets = [rng.integers(4, 97, size=3), rng.integers(4, 97, size=4)]

    def alone(source, target):
        return module.apply(
            {"params": params},
            source[None],
            np.ones((1, len(source)), np.int32),
            target[None],
        )[0]

    # One row: [source0 | source1 | pad], segments 1, 2, 0.
    packed_source = np.concatenate([*sources, [PAD]])[None]
    source_segments = np.array([[1] * 5 + [2] * 4 + [0]])
    packed_target = np.concatenate([*targets, [PAD, PAD]])[None]
    target_segments = np.array([[1] * 3 + [2] * 4 + [0, 0]])
    packed = module.apply(
        {"params": params},
        packed_source,
        (source_segments > 0).astype(np.int32),
        packed_target,
        (target_segments > 0).astype(np.int32),
        segment_ids=source_segments,
        decoder_segment_ids=target_segments,
    )[0]
    np.testing.assert_allclose(packed[:3], alone(sources[0], targets[0]), atol=1e-5)
    np.testing.assert_allclose(packed[3:7], alone(sources[1], targets[1]), atol=1e-5)


def test_positions_restart_per_segment():
    segments = jnp.array([[1, 1, 1, 2, 2, 3, 0, 0]])
    np.testing.assert_array_equal(positions_from_segments(segments), [[0, 1, 2, 0, 1, 0, 0, 1]])


def test_bfloat16_compute_keeps_float32_params_and_stays_close(torch_model, saved_dir):
    model = FlaxBartForConditionalGeneration.from_pretrained(saved_dir, dtype=jnp.bfloat16)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(model.params))
    batch = padded_batch()
    logits = model(*batch).logits
    assert logits.dtype == jnp.float32  # the LM head accumulates and returns float32
    assert_close_to_pytorch(logits, torch_model, batch, atol=0.1)


def test_dropout_is_active_only_in_training(saved_dir):
    model = FlaxBartForConditionalGeneration.from_pretrained(saved_dir)
    batch = padded_batch()
    eval_a = model(*batch).logits
    eval_b = model(*batch).logits
    np.testing.assert_array_equal(eval_a, eval_b)
    train_a = model(*batch, train=True, dropout_rng=jax.random.key(1)).logits
    train_b = model(*batch, train=True, dropout_rng=jax.random.key(2)).logits
    assert not np.allclose(train_a, train_b)
    with pytest.raises(ValueError, match="dropout_rng"):
        model(*batch, train=True)


def test_jitted_module_apply_gives_pytorch_logits(torch_model, saved_dir):
    """Training and evaluation call the bare module's apply under jit, not the eager wrapper
    the tests above go through: that path must give PyTorch's logits too."""
    model = FlaxBartForConditionalGeneration.from_pretrained(saved_dir)
    batch = padded_batch()
    forward = jax.jit(lambda params, *arrays: model.module.apply({"params": params}, *arrays))
    assert_close_to_pytorch(forward(model.params, *batch), torch_model, batch)
