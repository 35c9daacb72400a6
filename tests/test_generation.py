"""Greedy and beam search against transformers' PyTorch generate, token for token."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from tiny_models import tiny_bart_config
from transformers import BartForConditionalGeneration

from kobart_flax import FlaxBartForConditionalGeneration
from kobart_flax.generation import GenerationSettings, banned_ngram_tokens

PAD, EOS, START = 3, 1, 1
VOCAB = 40


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny random BART whose outputs depend on the input and often end early."""
    # Large weights: peaked, input-dependent next-token distributions.
    config = tiny_bart_config(VOCAB, init_std=0.3)
    torch.manual_seed(0)
    torch_model = BartForConditionalGeneration(config).eval()
    with torch.no_grad():
        torch_model.final_logits_bias[0, EOS] = 1.5  # some sequences stop before max_length
    directory = tmp_path_factory.mktemp("tiny_generation")
    torch_model.save_pretrained(directory)
    return torch_model, FlaxBartForConditionalGeneration.from_pretrained(directory)


def sources():
    """Four sources of different lengths, right-padded."""
    rng = np.random.default_rng(0)
    lengths = [9, 5, 7, 3]
    input_ids = np.full((4, 9), PAD, np.int64)
    for row, length in enumerate(lengths):
        input_ids[row, :length] = rng.integers(4, VOCAB, length)
        input_ids[row, length - 1] = EOS
    return input_ids, (input_ids != PAD).astype(np.int64)


def torch_generate(torch_model, max_length, **settings):
    input_ids, attention_mask = sources()
    with torch.no_grad():
        out = torch_model.generate(
            input_ids=torch.tensor(input_ids),
            attention_mask=torch.tensor(attention_mask),
            max_length=max_length,
            do_sample=False,
            **settings,
        ).numpy()
    # transformers trims to the longest output; ours keeps max_length, padded.
    return np.pad(out, ((0, 0), (0, max_length - out.shape[1])), constant_values=PAD)


SETTINGS = [
    pytest.param(dict(num_beams=1), id="greedy"),
    pytest.param(dict(num_beams=1, min_length=6, no_repeat_ngram_size=2), id="greedy-min-ngram"),
    pytest.param(dict(num_beams=4), id="beam4"),
    pytest.param(dict(num_beams=4, early_stopping=True, length_penalty=2.0), id="beam4-early-lp2"),
    pytest.param(
        dict(num_beams=3, min_length=5, no_repeat_ngram_size=3, length_penalty=0.5),
        id="beam3-min-ngram-lp05",
    ),
    pytest.param(dict(num_beams=5, early_stopping="never", length_penalty=1.5), id="beam5-never"),
]


@pytest.mark.parametrize("settings", SETTINGS)
def test_tokens_equal_pytorch_generate(models, settings):
    torch_model, flax_model = models
    max_length = 12
    expected = torch_generate(torch_model, max_length, **settings)
    input_ids, attention_mask = sources()
    got = flax_model.generate(input_ids, attention_mask, max_length=max_length, **settings)
    np.testing.assert_array_equal(np.asarray(got.sequences), expected)


def test_outputs_are_not_degenerate(models):
    """The parity above means something only if outputs differ by input and by length."""
    _, flax_model = models
    input_ids, attention_mask = sources()
    sequences = np.asarray(flax_model.generate(input_ids, attention_mask, max_length=12).sequences)
    assert len({tuple(row) for row in sequences}) == len(sequences)
    lengths = [(row != PAD).sum() for row in sequences]
    assert len(set(lengths)) > 1


def test_max_new_tokens_and_forced_eos(models):
    _, flax_model = models
    input_ids, attention_mask = sources()
    out = flax_model.generate(input_ids, attention_mask, max_new_tokens=4, num_beams=2).sequences
    assert out.shape == (4, 5)
    assert (np.asarray(out)[:, 0] == START).all()
    # Forced </s> at the last position: every row ends with </s> before or at the end.
    assert all(EOS in row[1:] for row in np.asarray(out))


def test_banned_ngrams_match_a_direct_count():
    sequences = jnp.array([[1, 5, 6, 5, 6, 7, 5, 0, 0]])
    # With n=2 after "1 5 6 5 6 7 5" (cur_len 7): prefix (5,) was followed by 6 and 6 -> ban 6.
    banned = banned_ngram_tokens(sequences, jnp.array(7), 2, 10)
    assert np.flatnonzero(np.asarray(banned[0])).tolist() == [6]
    # n=3: prefix (7, 5) never occurred before -> nothing banned.
    banned = banned_ngram_tokens(sequences, jnp.array(7), 3, 10)
    assert not np.asarray(banned).any()


def test_invalid_settings_are_rejected():
    with pytest.raises(ValueError, match="num_beams"):
        GenerationSettings(
            max_length=5, decoder_start_token_id=1, eos_token_id=1, pad_token_id=3, num_beams=0
        )
    with pytest.raises(ValueError, match="early_stopping"):
        GenerationSettings(
            max_length=5,
            decoder_start_token_id=1,
            eos_token_id=1,
            pad_token_id=3,
            early_stopping="soon",
        )
