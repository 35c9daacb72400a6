"""export_pt.py: HF PyTorch -> Flax -> train -> Orbax -> export -> PyTorch, and bad input."""

import json
import logging
import os
import shutil
import struct
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from tiny_models import tiny_kobart_config, tiny_run_config
from transformers import AutoModelForSeq2SeqLM, BartConfig, BartModel

import export_pt
from kobart_flax import FlaxBartForConditionalGeneration, export
from kobart_flax.checkpoint import restore_params
from kobart_flax.data_io import read_examples
from kobart_flax.tokenization import encode_examples, load_tokenizer
from kobart_flax.train import train_and_evaluate

pytest_plugins = ["export_fixtures"]

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample"


@pytest.mark.slow  # the trained_run and exported fixtures
def test_round_trip_logits_and_loaders(trained_run, exported):
    output = exported
    checkpoints = trained_run / "checkpoints"

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


@pytest.mark.slow  # the exported fixture (a training run)
def test_tokenizer_files_are_kobarts_class_with_the_source_limit_and_no_local_keys(exported):
    config = json.loads((exported / "tokenizer_config.json").read_text())
    assert config == {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "mask_token": "<mask>",
        "model_max_length": 1024,  # 1026 positions less BART's offset 2
        "model_input_names": ["input_ids", "attention_mask"],
        "clean_up_tokenization_spaces": False,
    }
    tokenizer = json.loads((exported / "tokenizer.json").read_text())
    single = [next(iter(piece.values()))["id"] for piece in tokenizer["post_processor"]["single"]]
    assert single == ["<s>", "A", "</s>"]
    # The merges format of tokenizers 0.19, which transformers 4.40 to 4.44 require.
    assert all(isinstance(merge, str) for merge in tokenizer["model"]["merges"])


@pytest.mark.slow  # the exported fixture (a training run)
def test_project_encoding_is_unchanged_by_the_exported_tokenizer(exported):
    """Training, predict and the demo encode with add_special_tokens=False and add the ids
    themselves: the exported post-processor must not add a second <s> ... </s>."""
    examples = read_examples(str(SAMPLE / "test.tsv"), "error")

    def encoded_bytes(tokenizer_dir: Path) -> list[bytes]:
        encoded = encode_examples(load_tokenizer(str(tokenizer_dir)), examples, 64, 32)
        return [e.input_ids.tobytes() + b"|" + e.labels.tobytes() for e in encoded]

    assert encoded_bytes(exported) == encoded_bytes(SAMPLE / "tokenizer")


@pytest.mark.slow  # the exported fixture (a training run)
def test_model_card_describes_the_run(exported):
    card = (exported / "README.md").read_text()
    header, body = card.removeprefix("---\n").split("\n---\n", 1)
    fields = dict(line.split(": ", 1) for line in header.splitlines())
    assert json.loads(fields["language"]) == ["ko"]
    assert json.loads(fields["license"]) == "mit"
    assert json.loads(fields["pipeline_tag"]) == "summarization"
    # The run started from a local directory: no hub id to name as the base model.
    assert "base_model" not in fields
    assert "exported at step 2 " in body
    assert "train.tsv` (2 steps of 16 examples per epoch)" in body
    assert "| 2 (this model) | " in body  # the final evaluation, with its eval loss
    assert "num_beams 4, max_length 64" in body
    assert 'tokenizer(article, truncation=True, return_tensors="pt")' in body
    assert "Input is cut at 1024 tokens" in body


def kobart_shaped_checkpoint(directory: Path) -> Path:
    """gogamza/kobart-base-v1's layout at a fraction of its width: a BartModel
    pytorch_model.bin (no ``model.`` prefix, no lm_head), 30,000 tokens, 1026 positions,
    tokenizer.json and special_tokens_map.json but no tokenizer_config.json."""
    config = BartConfig(
        **{
            **tiny_kobart_config(30000, tokenizer_class="PreTrainedTokenizerFast").to_dict(),
            "d_model": 16,
            "encoder_ffn_dim": 32,
            "decoder_ffn_dim": 32,
        }
    )
    torch.manual_seed(0)
    directory.mkdir()
    config.save_pretrained(directory)
    torch.save(BartModel(config).state_dict(), directory / "pytorch_model.bin")
    shutil.copy(SAMPLE / "tokenizer" / "tokenizer.json", directory)
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    (directory / "special_tokens_map.json").write_text(json.dumps(special))
    return directory


def safetensors_header(path: Path) -> tuple[int, dict]:
    """(header bytes, header) of a safetensors file: 8-byte length, then JSON."""
    with path.open("rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        return 8 + length, json.loads(file.read(length))


def test_kobart_shaped_checkpoint_exports_its_embedding_once_and_world_readable(tmp_path):
    pretrained = kobart_shaped_checkpoint(tmp_path / "kobart")
    (tmp_path / "train.tsv").write_text(
        "\n".join((SAMPLE / "train.tsv").read_text(encoding="utf-8").splitlines()[:9]) + "\n",
        encoding="utf-8",
    )
    overrides = [
        f"model.pretrained={pretrained}",
        f"model.tokenizer={pretrained}",
        f"data.train_path={tmp_path / 'train.tsv'}",
        f"data.eval_path={tmp_path / 'train.tsv'}",
        f"train.workdir={tmp_path / 'run'}",
        "data.max_source_length=64",
        "data.source_buckets=64",
        "data.max_target_length=32",
        "data.target_buckets=32",
        "train.batch_size=4",
        "train.max_steps=2",
        "train.eval_every=0",
        "train.rouge_every=0",
    ]
    train_and_evaluate(tiny_run_config(overrides))
    output = tmp_path / "exported"
    checkpoints = tmp_path / "run" / "checkpoints"
    argv = ["--checkpoint", str(checkpoints), "--output", str(output)]
    argv += ["--base-model", "gogamza/kobart-base-v1", "--dataset", "USER/dacon-news"]
    previous = os.umask(0o022)
    try:
        # Includes the check that PyTorch, with the ties restored, gives the Flax logits.
        assert export_pt.main(argv) == 0
    finally:
        os.umask(previous)

    weights = output / "model.safetensors"
    header_size, header = safetensors_header(weights)
    assert not {"lm_head.weight", "model.encoder.embed_tokens.weight"} & set(header)
    params, _ = restore_params(checkpoints)
    parameter_count = sum(leaf.size for leaf in jax.tree.leaves(params))
    # float32, every parameter once: 30,000 x 16 embedding included, no copies of it.
    assert weights.stat().st_size - header_size == 4 * parameter_count
    for file in output.iterdir():
        assert file.stat().st_mode & 0o777 == 0o644, file.name
    card = (output / "README.md").read_text()
    assert 'base_model: "gogamza/kobart-base-v1"' in card
    assert 'datasets: ["USER/dacon-news"]' in card


def previous_export(output: Path) -> Path:
    """A directory that looks like an earlier export (what --overwrite may replace)."""
    output.mkdir(parents=True)
    (output / "config.json").write_text("{}")
    (output / "old.bin").write_text("previous weights")
    return output


@pytest.mark.slow  # the trained_run fixture
def test_existing_output_is_refused_unless_overwrite(trained_run, tmp_path, caplog):
    output = previous_export(tmp_path / "exported")
    argv = ["--checkpoint", str(trained_run / "checkpoints"), "--output", str(output)]
    with caplog.at_level(logging.ERROR):
        assert export_pt.main(argv) == 2
    assert "exists; pass --overwrite" in caplog.text
    assert (output / "old.bin").read_text() == "previous weights"
    assert export_pt.main([*argv, "--overwrite", "--no-verify"]) == 0
    assert not (output / "old.bin").exists()
    assert (output / "model.safetensors").exists()
    assert not list(tmp_path.glob("*.tmp"))


def test_overwrite_keeps_the_previous_export_when_the_checkpoint_is_bad(tmp_path, caplog):
    output = previous_export(tmp_path / "exported")
    argv = ["--checkpoint", str(tmp_path / "typo"), "--output", str(output), "--overwrite"]
    with caplog.at_level(logging.ERROR):
        assert export_pt.main(argv) == 2
    assert f"no model at {tmp_path / 'typo'}: no such directory" in caplog.text
    assert (output / "old.bin").read_text() == "previous weights"


@pytest.mark.slow  # the trained_run fixture
def test_overwrite_keeps_the_previous_export_when_verification_fails(
    trained_run, tmp_path, caplog, monkeypatch
):
    monkeypatch.setattr(export, "verify", lambda *args: 1.0)
    output = previous_export(tmp_path / "exported")
    argv = ["--checkpoint", str(trained_run / "checkpoints"), "--output", str(output)]
    with caplog.at_level(logging.ERROR):
        assert export_pt.main([*argv, "--overwrite"]) == 2
    assert "was left as it was" in caplog.text
    assert sorted(p.name for p in output.iterdir()) == ["config.json", "old.bin"]


@pytest.mark.slow  # the trained_run fixture
def test_output_that_holds_the_working_directory_or_other_files_is_refused(
    trained_run, tmp_path, caplog, monkeypatch
):
    cwd = tmp_path / "project" / "sub"
    cwd.mkdir(parents=True)
    (cwd / "notes.txt").write_text("user data")
    monkeypatch.chdir(cwd)
    checkpoints = str(trained_run / "checkpoints")
    for output, reason in [
        (".", "the working directory"),
        ("..", "the working directory"),
        (str(tmp_path / "project"), "the working directory"),
        (str(cwd / "notes.txt"), "not a directory"),
    ]:
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            argv = ["--checkpoint", checkpoints, "--output", output, "--overwrite"]
            assert export_pt.main([*argv, "--no-verify"]) == 2, output
        (message,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert reason in message and "\n" not in message, message
    # A non-empty directory without config.json is not an earlier export: never replaced.
    other = tmp_path / "photos"
    other.mkdir()
    (other / "a.jpg").write_text("user data")
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        argv = ["--checkpoint", checkpoints, "--output", str(other), "--overwrite"]
        assert export_pt.main([*argv, "--no-verify"]) == 2
    assert "not an earlier export" in caplog.text
    assert (other / "a.jpg").read_text() == "user data"
    assert (cwd / "notes.txt").read_text() == "user data"


def test_missing_checkpoint_is_a_clear_error(tmp_path, caplog):
    with caplog.at_level(logging.ERROR):
        code = export_pt.main(
            ["--checkpoint", str(tmp_path / "nope"), "--output", str(tmp_path / "o")]
        )
    assert code == 2
    assert f"no model at {tmp_path / 'nope'}: no such directory" in caplog.text
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


@pytest.mark.slow  # the trained_run fixture
def test_a_workdir_as_checkpoint_uses_its_checkpoints_directory(trained_run, tmp_path, caplog):
    output = tmp_path / "exported"
    with caplog.at_level(logging.INFO):
        argv = ["--checkpoint", str(trained_run), "--output", str(output), "--no-verify"]
        assert export_pt.main(argv) == 0
    assert f"using {trained_run / 'checkpoints'}" in caplog.text
    assert (output / "model.safetensors").exists()
