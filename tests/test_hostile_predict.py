"""predict, the demo and the Summarizer on hostile flags and input: one clear line, no loss."""

import json
import logging
import shutil
from pathlib import Path

import pytest
from tiny_models import save_tiny_model

import predict
from kobart_flax import FlaxBartForConditionalGeneration, demo, korean_rouge
from kobart_flax.data_io import read_examples
from kobart_flax.loading import ModelLoadError
from kobart_flax.summarize import Summarizer
from kobart_flax.tokenization import load_tokenizer

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample"
# tiny_kobart_config has KoBART's 1026 positions, two of them BART's offset.
SOURCE_LIMIT = 1024


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny_model"))


def articles(count: int) -> list[str]:
    return [example.news for example in read_examples(str(SAMPLE / "test.tsv"))[:count]]


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
    assert "--max-source-length=1100" in message and str(SOURCE_LIMIT) in message, message
    assert "\n" not in message
    assert not output.exists()
    # The decoder's positions bound the summary the same way.
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert predict.main([*argv, "--max-length", "1025"]) == 2
    (message,) = error_lines(caplog)
    assert "--max-length=1025" in message and str(SOURCE_LIMIT) in message, message
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
        with pytest.raises(ModelLoadError, match=reason):
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
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE"):
        demo.load_model("tpyo/kobart-base")


class LimitedMecab:
    """Mecab as it behaves on a multi-megabyte text (MeCabError), at a length a test can afford."""

    def __init__(self, real, limit: int):
        self.real, self.limit = real, limit

    def morphs(self, text: str) -> list[str]:
        import mecab

        if len(text) > self.limit:
            raise mecab.MeCabError("")
        return self.real.morphs(text)


@pytest.fixture
def limited_mecab(monkeypatch) -> LimitedMecab:
    tokenizer = korean_rouge.make_tokenizer("mecab")
    limited = LimitedMecab(tokenizer._mecab, limit=200)
    monkeypatch.setattr(tokenizer, "_mecab", limited)
    monkeypatch.setattr(korean_rouge, "MECAB_MAX_CHARS", 200)
    return limited


def test_a_text_too_long_for_one_mecab_call_is_scored_in_parts(limited_mecab):
    text = " ".join(articles(20))
    whole = limited_mecab.real.morphs(korean_rouge.clean(text))
    assert len(text) > 10 * limited_mecab.limit
    assert korean_rouge.make_tokenizer("mecab").tokenize(text) == whole
    scores = korean_rouge.rouge([text], [text])
    assert scores["rouge1_f"] == pytest.approx(1.0) and scores["rougeL_f"] == pytest.approx(1.0)


def test_predict_scores_a_huge_jsonl_line_or_names_it_in_one_line(
    model_dir, tmp_path, capsys, caplog, limited_mecab
):
    long_text = " ".join(articles(20))
    source = tmp_path / "news.jsonl"
    rows = [
        {"news": "짧은 기사입니다.", "summary": "짧은 요약"},
        {"news": long_text, "summary": long_text},
    ]
    source.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    output = tmp_path / "predictions.tsv"
    argv = ["--model", str(model_dir), "--input", str(source), "--output", str(output)]
    argv += ["--num-beams", "1", "--max-length", "8", "--max-source-length", "64"]
    assert predict.main(argv) == 0
    assert "2 articles with references" in capsys.readouterr().out

    # Should Mecab fail on a part all the same: one line naming the row, after the predictions.
    limited_mecab.limit = 1
    output.unlink()
    with caplog.at_level(logging.ERROR):
        assert predict.main(argv) == 2
    (message,) = error_lines(caplog)
    assert message.startswith(f"{source}:1: ROUGE: Mecab cannot tokenize"), message
    assert "\n" not in message and output.exists()


def test_predict_says_how_many_articles_it_truncated_and_where(model_dir, tmp_path, caplog):
    texts = articles(6)
    tokenizer = load_tokenizer(str(model_dir))
    longer = sum(len(tokenizer(text)["input_ids"]) > 62 for text in texts)
    assert 0 < longer < len(texts)
    (tmp_path / "articles.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    argv = ["--model", str(model_dir), "--input", str(tmp_path / "articles.txt")]
    with caplog.at_level(logging.WARNING):
        assert predict.main([*argv, "--max-length", "6", "--max-source-length", "64"]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"{longer} of 6 articles are longer than --max-source-length 64 tokens" in "".join(
        warnings
    )


def generation_line(caplog) -> str:
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("generation:")]
    return line


def test_predict_defaults_to_the_models_generation_config_and_source_limit(
    model_dir, tmp_path, caplog, capsys
):
    """An export's generation_config.json and tokenizer limit are what predict uses unless a
    flag says otherwise; a model without them decodes as training's evaluation does."""
    from transformers import GenerationConfig

    exported = tmp_path / "exported"
    shutil.copytree(model_dir, exported)
    GenerationConfig(
        num_beams=1, max_length=6, no_repeat_ngram_size=2, eos_token_id=1, pad_token_id=3
    ).save_pretrained(exported)
    tokenizer = load_tokenizer(str(exported))
    tokenizer.model_max_length = 100
    tokenizer.save_pretrained(exported)
    text = " ".join(articles(4))
    with caplog.at_level(logging.INFO):
        assert predict.main(["--model", str(exported), "--text", text]) == 0
    assert generation_line(caplog) == (
        "generation: num_beams 1, max_length 6, min_length 0, length_penalty 1.0, "
        "no_repeat_ngram_size 2; max_source_length 100"
    )
    model = FlaxBartForConditionalGeneration.from_pretrained(exported)
    summarizer = Summarizer(
        model.module, tokenizer, model.generation_settings(), max_source_length=100
    )
    assert capsys.readouterr().out == summarizer.summarize(model.params, [text])[0] + "\n"

    caplog.clear()
    with caplog.at_level(logging.INFO):
        argv = ["--model", str(exported), "--text", text, "--num-beams", "2"]
        assert predict.main([*argv, "--max-source-length", "64"]) == 0
    assert generation_line(caplog).startswith("generation: num_beams 2, max_length 6, ")
    assert generation_line(caplog).endswith("; max_source_length 64")

    # No generation_config.json, a tokenizer without a limit: beam 4, 128, all positions.
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert predict.main(["--model", str(model_dir), "--text", "짧은 기사입니다."]) == 0
    assert generation_line(caplog) == (
        "generation: num_beams 4, max_length 128, min_length 0, length_penalty 1.0, "
        f"no_repeat_ngram_size 0; max_source_length {SOURCE_LIMIT}"
    )
