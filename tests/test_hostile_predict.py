"""Flags past what the model can read: a clear error, not silently empty summaries."""

import logging
from pathlib import Path

import pytest
from tiny_models import save_tiny_model

import predict
from kobart_flax import FlaxBartForConditionalGeneration, demo
from kobart_flax.summarize import Summarizer
from kobart_flax.tokenization import load_tokenizer

# tiny_kobart_config has KoBART's 1026 positions, two of them BART's offset.
SOURCE_LIMIT = 1024


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny_model"))


def error_lines(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]


@pytest.mark.parametrize("length", [SOURCE_LIMIT + 1, 1100, 2, 0])
def test_summarizer_refuses_a_source_length_the_model_cannot_read(model_dir, length):
    model = FlaxBartForConditionalGeneration.from_pretrained(model_dir)
    tokenizer = load_tokenizer(str(model_dir))
    settings = model.generation_settings(max_length=6)
    with pytest.raises(ValueError, match=f"max_source_length={length}: .*{SOURCE_LIMIT}"):
        Summarizer(model.module, tokenizer, settings, max_source_length=length)
    # The whole position table is usable.
    Summarizer(model.module, tokenizer, settings, max_source_length=SOURCE_LIMIT)


def test_predict_with_a_too_long_source_length_is_one_line_and_writes_nothing(
    model_dir, tmp_path, caplog
):
    output = tmp_path / "predictions.tsv"
    argv = ["--model", str(model_dir), "--text", "짧은 기사입니다.", "--output", str(output)]
    with caplog.at_level(logging.ERROR):
        assert predict.main([*argv, "--max-source-length", "1100"]) == 2
    (message,) = error_lines(caplog)
    assert "max_source_length=1100" in message and str(SOURCE_LIMIT) in message, message
    assert "\n" not in message
    assert not output.exists()


def test_demo_refuses_a_too_long_source_length_before_compiling(model_dir, caplog, monkeypatch):
    def never(self, *args, **kwargs):
        raise AssertionError("the demo compiled with a source length past the model's positions")

    monkeypatch.setattr(demo.SummaryService, "warm_up", never)
    with caplog.at_level(logging.ERROR):
        assert demo.main(["--model", str(model_dir), "--max-source-length", "1100"]) == 2
    (message,) = error_lines(caplog)
    assert "--max-source-length=1100" in message and str(SOURCE_LIMIT) in message, message


def test_a_mistyped_model_path_is_one_line_naming_it(model_dir, tmp_path, caplog, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "notes.txt").write_text("not a model")
    for model, reason in [
        ("runs/tiny/final_mdel", "no model at runs/tiny/final_mdel: no such directory"),
        # Shaped like a hub id, but runs/ is here: a local typo, answered without the hub.
        ("runs/final_mdel", "no model at runs/final_mdel: no such directory"),
        ("runs", "runs: no config.json"),
        ("runs/notes.txt", "runs/notes.txt is a file"),
    ]:
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            assert predict.main(["--model", model, "--text", "짧은 기사입니다."]) == 2, model
        (message,) = error_lines(caplog)
        assert reason in message and "\n" not in message, message
        with pytest.raises(demo.ModelUnavailable, match=reason):
            demo.load_model(model)


def test_a_hub_name_out_of_reach_is_one_line_naming_the_offline_switch(caplog, monkeypatch):
    import huggingface_hub.constants

    # Offline, as HF_HUB_OFFLINE=1 makes it: no network in tests, and no 20 s of retries.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with caplog.at_level(logging.ERROR):
        assert predict.main(["--model", "tpyo/kobart-base", "--text", "짧은 기사입니다."]) == 2
    (message,) = error_lines(caplog)
    assert message.startswith("no model at tpyo/kobart-base: not a local directory"), message
    assert "HF_HUB_OFFLINE" in message and "\n" not in message, message
    with pytest.raises(demo.ModelUnavailable, match="HF_HUB_OFFLINE"):
        demo.load_model("tpyo/kobart-base")
