"""loading.load_model: every kind of source gives the same model, and every entry point (predict,
the demo, export_pt, training) answers a bad source with the same one line and exit code 2."""

import logging
from pathlib import Path

import jax
import numpy as np
import pytest
from tiny_models import (
    SAMPLE,
    save_tiny_checkpoint,
    save_tiny_model,
    tiny_run_overrides,
    write_slice,
    write_tiny_data,
)

import export_pt
import predict
import train_flax
from kobart_flax import FlaxBartForConditionalGeneration, demo, loading


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, Path, FlaxBartForConditionalGeneration]:
    """(a model directory, a run's workdir with one checkpoint step, the checkpoint's model)."""
    root = tmp_path_factory.mktemp("sources")
    model = save_tiny_checkpoint(root / "run", step=3)
    return save_tiny_model(root / "model"), root / "run", model


@pytest.fixture
def offline(monkeypatch):
    """HF_HUB_OFFLINE=1: no network in tests, and no 20 s of hub retries."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def assert_same_params(actual: dict, expected: dict) -> None:
    jax.tree.map(np.testing.assert_array_equal, actual, expected)


def test_a_workdir_its_checkpoints_and_a_step_load_the_saved_params(saved):
    _, workdir, model = saved
    checkpoints = workdir / "checkpoints"
    for source in (workdir, checkpoints, checkpoints / "3"):
        loaded = loading.load_model(source)
        assert loaded.metadata["step"] == 3, source
        assert loaded.model.config.to_dict() == model.config.to_dict()
        assert_same_params(loaded.model.params, model.params)
        assert len(loaded.tokenizer) == model.config.vocab_size
    assert loading.resolve_source(workdir).location == str(checkpoints)


def test_a_model_directory_loads_with_its_tokenizer(saved):
    model_dir, _, _ = saved
    loaded = loading.load_model(model_dir, "bfloat16")
    expected = FlaxBartForConditionalGeneration.from_pretrained(model_dir)
    assert loaded.metadata is None and loaded.model.dtype == np.dtype("bfloat16")
    assert_same_params(loaded.model.params, expected.params)
    assert len(loaded.tokenizer) == loaded.model.config.vocab_size
    with pytest.raises(loading.ModelLoadError, match="not an Orbax checkpoint"):
        loading.load_model(model_dir, step=3)


def test_from_pretrained_reads_a_checkpoint_too(saved):
    _, workdir, model = saved
    assert_same_params(
        FlaxBartForConditionalGeneration.from_pretrained(workdir).params, model.params
    )


def test_broken_sources_are_one_line(saved, tmp_path):
    model_dir, workdir, _ = saved
    (tmp_path / "notes").mkdir()
    (tmp_path / "weightless").mkdir()
    (tmp_path / "weightless" / "config.json").write_text((model_dir / "config.json").read_text())
    for source, reason in [
        (tmp_path / "notes", "no config.json, so not a model directory"),
        (tmp_path / "weightless", "cannot load a model from .*weightless: .*no weights file"),
        (workdir / "checkpoints" / "7", "no model at .*checkpoints/7: no such directory"),
    ]:
        with pytest.raises(loading.ModelLoadError, match=reason) as raised:
            loading.load_model(source)
        assert "\n" not in str(raised.value)
    with pytest.raises(loading.ModelLoadError, match="no complete checkpoint for step 9"):
        loading.load_model(workdir, step=9)


REPO = Path(__file__).resolve().parent.parent


def train_tiny(override: str, tmp_path: Path) -> int:
    """train_flax.py on a slice of the sample data, with ``override``."""
    write_tiny_data(tmp_path / "data", train_rows=16, eval_rows=4)
    config = str(REPO / "configs" / "tiny.py")
    workdir = tmp_path / "run"
    return train_flax.main(
        ["--config", config, *tiny_run_overrides(tmp_path / "data", workdir), override]
    )


def entry_point_errors(source: str, tmp_path: Path, caplog) -> dict[str, tuple[int, list[str]]]:
    """(exit code, ERROR lines) of each command given ``source`` as its model."""
    text = ["--text", "짧은 기사입니다."]
    commands = {
        "predict": lambda: predict.main(["--model", source, *text]),
        "demo --model": lambda: demo.main(["--model", source]),
        "demo --checkpoint": lambda: demo.main(["--checkpoint", source]),
        "export_pt": lambda: export_pt.main(
            ["--checkpoint", source, "--output", str(tmp_path / "exported")]
        ),
        "train model.pretrained": lambda: train_tiny(f"model.pretrained={source}", tmp_path),
        "train train.init_checkpoint": lambda: train_tiny(
            f"train.init_checkpoint={source}", tmp_path
        ),
    }
    results = {}
    for name, command in commands.items():
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            code = command()
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        results[name] = (code, errors)
    return results


@pytest.mark.parametrize(
    "source, reason",
    [
        ("runs/tiny/final_mdel", "no model at runs/tiny/final_mdel: no such directory"),
        ("notes", "notes: no config.json, so not a model directory"),
        (
            "tpyo/kobart-base",
            "no model at tpyo/kobart-base: not a local directory, and not in the Hugging Face "
            "cache (HF_HUB_OFFLINE is set",
        ),
    ],
)
def test_every_entry_point_answers_a_bad_source_with_one_line(
    tmp_path, monkeypatch, caplog, offline, source, reason
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes").mkdir()
    for name, (code, errors) in entry_point_errors(source, tmp_path, caplog).items():
        assert code == 2, name
        (message,) = errors
        # export_pt and train.init_checkpoint read checkpoints, never the hub: a hub name is
        # refused as it is.
        needs_checkpoint = name in ("export_pt", "train train.init_checkpoint")
        hub_to_checkpoint = needs_checkpoint and source.startswith("tpyo")
        expected = f"{source}: not an Orbax checkpoint" if hub_to_checkpoint else reason
        assert expected in message and "\n" not in message, (name, message)
    assert not (tmp_path / "exported").exists()


def test_predict_summarizes_from_a_checkpoint_as_from_the_same_model_directory(saved, tmp_path):
    model_dir, workdir, _ = saved  # the same random model, saved both ways
    articles = tmp_path / "articles.tsv"
    write_slice(SAMPLE / "test.tsv", articles, rows=8)
    outputs = {}
    for name, source in (("directory", model_dir), ("checkpoint", workdir)):
        outputs[name] = tmp_path / f"{name}.tsv"
        argv = ["--model", str(source), "--input", str(articles)]
        settings = ["--num-beams", "1", "--max-length", "8", "--max-source-length", "64"]
        assert predict.main([*argv, *settings, "--output", str(outputs[name])]) == 0
    assert outputs["checkpoint"].read_text() == outputs["directory"].read_text()


def test_a_mistyped_tokenizer_is_one_line(saved, tmp_path, caplog, offline):
    model_dir, _, _ = saved
    for tokenizer, reason in [
        (str(tmp_path / "tokenzer"), f"no tokenizer at {tmp_path / 'tokenzer'}: no such directory"),
        ("tpyo/kobart-base", "cannot load a tokenizer from tpyo/kobart-base"),
    ]:
        caplog.clear()
        argv = ["--model", str(model_dir), "--tokenizer", tokenizer, "--text", "짧은 기사입니다."]
        with caplog.at_level(logging.ERROR):
            assert predict.main(argv) == 2
        (message,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert reason in message and "\n" not in message, message
