"""export_pt.py: HF PyTorch -> Flax -> train -> Orbax -> export -> PyTorch, and bad input."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import tiny_kobart_config
from transformers import (
    AutoModelForSeq2SeqLM,
    BartForConditionalGeneration,
)

import export_pt
from kobart_flax import FlaxBartForConditionalGeneration
from kobart_flax.checkpoint import restore_params
from kobart_flax.config import apply_overrides, load_config
from kobart_flax.summarize import Summarizer
from kobart_flax.tokenization import load_tokenizer
from kobart_flax.train import train_and_evaluate

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample"


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A tiny PyTorch BART fine-tuned for two steps by train_flax; returns the workdir."""
    root = tmp_path_factory.mktemp("export")
    tokenizer = load_tokenizer(str(SAMPLE / "tokenizer"))
    config = tiny_kobart_config(len(tokenizer))
    torch.manual_seed(0)
    BartForConditionalGeneration(config).save_pretrained(root / "pretrained")
    lines = (SAMPLE / "train.tsv").read_text(encoding="utf-8").splitlines()
    (root / "train.tsv").write_text("\n".join(lines[:33]) + "\n", encoding="utf-8")
    overrides = [
        f"model.pretrained={root / 'pretrained'}",
        f"model.tokenizer={SAMPLE / 'tokenizer'}",
        f"data.train_path={root / 'train.tsv'}",
        f"data.eval_path={root / 'train.tsv'}",
        f"train.workdir={root / 'run'}",
        "data.max_source_length=128",
        "data.source_buckets=128",
        "data.max_target_length=32",
        "data.target_buckets=32",
        "train.batch_size=16",
        "train.max_steps=2",
        "train.eval_every=0",
        "train.learning_rate=1e-3",
        "train.rouge_every=0",
    ]
    train_and_evaluate(apply_overrides(load_config("configs/tiny.py"), overrides))
    return root / "run"


def test_round_trip_logits_and_loaders(trained_run, tmp_path):
    output = tmp_path / "exported"
    checkpoints = trained_run / "checkpoints"
    assert export_pt.main(["--checkpoint", str(checkpoints), "--output", str(output)]) == 0

    config = json.loads((output / "config.json").read_text())
    assert {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")} == {
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 3,
    }
    assert config["decoder_start_token_id"] == 1
    assert config["forced_eos_token_id"] == 1
    assert config["max_position_embeddings"] == 1026
    assert (output / "generation_config.json").is_file()
    assert (output / "tokenizer.json").is_file()

    params, _ = restore_params(checkpoints)
    flax_model = FlaxBartForConditionalGeneration.from_pretrained(output)
    torch_model = AutoModelForSeq2SeqLM.from_pretrained(output).eval()
    rng = np.random.default_rng(0)
    input_ids = rng.integers(4, 4000, (2, 12))
    decoder_input_ids = rng.integers(4, 4000, (2, 5))
    with torch.no_grad():
        expected = torch_model(
            input_ids=torch.tensor(input_ids), decoder_input_ids=torch.tensor(decoder_input_ids)
        ).logits.numpy()
    from_checkpoint = FlaxBartForConditionalGeneration(flax_model.config, params=params)
    got = np.asarray(from_checkpoint(input_ids, decoder_input_ids=decoder_input_ids).logits)
    np.testing.assert_allclose(got, expected, atol=1e-4)

    # The trained weights differ from the pretrained ones: the export is of the checkpoint.
    pretrained = FlaxBartForConditionalGeneration.from_pretrained(trained_run.parent / "pretrained")
    assert not np.allclose(
        pretrained(input_ids, decoder_input_ids=decoder_input_ids).logits, got, atol=1e-4
    )


def test_pytorch_generate_with_exported_settings_equals_ours(trained_run, tmp_path):
    """What pipeline("summarization") did (transformers 5 removed that task): tokenize,
    generate with the directory's generation_config.json, decode."""
    output = tmp_path / "exported"
    export_pt.main(["--checkpoint", str(trained_run / "checkpoints"), "--output", str(output)])
    articles = [
        line.split("\t")[0]
        for line in (SAMPLE / "test.tsv").read_text(encoding="utf-8").splitlines()[1:4]
    ]
    tokenizer = load_tokenizer(str(output))
    torch_model = AutoModelForSeq2SeqLM.from_pretrained(output).eval()
    assert torch_model.generation_config.num_beams == 4
    hf_texts = []
    for article in articles:
        # The tokenizer adds no <s> </s> itself; give PyTorch the ids our encoder builds.
        ids = [tokenizer.bos_token_id, *tokenizer(article, add_special_tokens=False)["input_ids"]]
        ids = torch.tensor([[*ids, tokenizer.eos_token_id]])
        with torch.no_grad():
            generated = torch_model.generate(ids, max_length=20)
        hf_texts.append(tokenizer.decode(generated[0], skip_special_tokens=True).strip())

    model = FlaxBartForConditionalGeneration.from_pretrained(output)
    ours = Summarizer(
        model.module, tokenizer, model.generation_settings(max_length=20), batch_size=2
    ).summarize(model.params, articles)
    assert ours == hf_texts
    assert all(ours)


def test_existing_output_is_refused_unless_overwrite(trained_run, tmp_path, caplog):
    output = tmp_path / "exported"
    output.mkdir()
    (output / "keep.txt").write_text("user data")
    argv = ["--checkpoint", str(trained_run / "checkpoints"), "--output", str(output)]
    with caplog.at_level(logging.ERROR):
        assert export_pt.main(argv) == 2
    assert "exists; pass --overwrite" in caplog.text
    assert (output / "keep.txt").read_text() == "user data"
    assert export_pt.main([*argv, "--overwrite", "--no-verify"]) == 0
    assert not (output / "keep.txt").exists()


def test_missing_checkpoint_is_a_clear_error(tmp_path, caplog):
    with caplog.at_level(logging.ERROR):
        code = export_pt.main(
            ["--checkpoint", str(tmp_path / "nope"), "--output", str(tmp_path / "o")]
        )
    assert code == 2
    assert "no such checkpoint directory" in caplog.text
    assert not (tmp_path / "o").exists()


def test_directory_that_is_not_a_checkpoint_is_a_clear_error(tmp_path, caplog):
    (tmp_path / "ckpt" / "7").mkdir(parents=True)
    (tmp_path / "ckpt" / "7" / "params").write_text("not orbax")
    with caplog.at_level(logging.ERROR):
        code = export_pt.main(
            ["--checkpoint", str(tmp_path / "ckpt"), "--output", str(tmp_path / "o")]
        )
    assert code == 2
    assert "ckpt" in caplog.text
