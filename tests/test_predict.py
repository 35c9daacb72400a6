"""The Summarizer and the predict command, on a tiny random model with the bundled tokenizer."""

import csv
import io
import logging
from pathlib import Path

import numpy as np
import pytest
from tiny_models import save_tiny_model

import predict
from kobart_flax import FlaxBartForConditionalGeneration
from kobart_flax.data_io import read_examples
from kobart_flax.predict import lead_sentence
from kobart_flax.summarize import Summarizer
from kobart_flax.tokenization import load_tokenizer

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny_model"))


def articles(count: int) -> list[str]:
    return [example.news for example in read_examples(str(SAMPLE / "test.tsv"))[:count]]


def test_batched_summaries_come_back_in_input_order(model_dir):
    model = FlaxBartForConditionalGeneration.from_pretrained(model_dir)
    tokenizer = load_tokenizer(str(model_dir))
    settings = model.generation_settings(max_length=12, num_beams=2)
    texts = articles(7)
    batched = Summarizer(model.module, tokenizer, settings, batch_size=3, max_source_length=128)
    one_by_one = Summarizer(model.module, tokenizer, settings, batch_size=1, max_source_length=128)
    summaries = batched.summarize(model.params, texts)
    assert summaries == [one_by_one.summarize(model.params, [text])[0] for text in texts]
    assert len(set(summaries)) > 1


def test_long_sources_are_truncated_not_fatal(model_dir):
    model = FlaxBartForConditionalGeneration.from_pretrained(model_dir)
    tokenizer = load_tokenizer(str(model_dir))
    # One row per batch, as below: the summary and the direct generation run the same shapes.
    summarizer = Summarizer(
        model.module,
        tokenizer,
        model.generation_settings(max_length=6),
        batch_size=1,
        max_source_length=64,
    )
    long_text = " ".join(articles(10))
    assert summarizer.is_truncated(long_text)
    (ids,) = summarizer.encode([long_text])
    # The first 62 tokens of the text between <s> and </s>: cut at the end, </s> kept.
    full = tokenizer(long_text, add_special_tokens=False)["input_ids"]
    assert ids == [tokenizer.bos_token_id, *full[:62], tokenizer.eos_token_id]
    generated = model.generate(np.array([ids]), max_length=6).sequences[0]
    expected = tokenizer.decode(generated, skip_special_tokens=True).strip()
    assert summarizer.summarize(model.params, [long_text]) == [expected]
    with pytest.raises(ValueError, match="text 1 is empty"):
        summarizer.summarize(model.params, ["기사", "  "])


def test_predict_writes_rows_in_order_and_scores_them(model_dir, tmp_path, capsys):
    source = tmp_path / "test.tsv"
    lines = (SAMPLE / "test.tsv").read_text(encoding="utf-8").splitlines()[:6]
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    output = tmp_path / "predictions.tsv"
    argv = ["--model", str(model_dir), "--input", str(source), "--output", str(output)]
    assert predict.main([*argv, "--max-length", "10", "--batch-size", "2"]) == 0

    with output.open(encoding="utf-8", newline="") as file:
        rows = list(csv.DictReader(file, delimiter="\t"))
    expected = read_examples(str(source))
    assert [row["news"] for row in rows] == [e.news for e in expected]
    assert [row["reference"] for row in rows] == [e.summary for e in expected]
    printed = capsys.readouterr().out
    assert "5 articles with references" in printed
    assert "lead-sentence baseline" in printed


def test_predict_reports_a_blank_line_with_its_number(model_dir, tmp_path, caplog):
    source = tmp_path / "articles.txt"
    source.write_text("첫 기사입니다.\n\n셋째 기사입니다.\n", encoding="utf-8")
    with caplog.at_level(logging.ERROR):
        assert predict.main(["--model", str(model_dir), "--input", str(source)]) == 2
    assert f"{source}:2: empty 'news'" in caplog.text


def test_lead_sentence():
    assert lead_sentence("첫 문장이다. 둘째 문장이다.") == "첫 문장이다."
    assert lead_sentence("마침표 없는 기사") == "마침표 없는 기사"
    assert lead_sentence("  질문인가? 답이다!  다음.") == "질문인가?"
    # On real articles: the lead is the article's first sentence, a proper prefix of it.
    for text in articles(3):
        lead = lead_sentence(text)
        assert text.strip().startswith(lead)
        assert lead[-1] in ".!?" and len(lead) < len(text.strip())


def test_one_article_from_text_or_stdin_prints_its_summary_alone(
    model_dir, tmp_path, capsys, monkeypatch, caplog
):
    options = ["--model", str(model_dir), "--num-beams", "2", "--max-length", "12"]
    texts = articles(3)
    (tmp_path / "articles.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    assert predict.main([*options, "--input", str(tmp_path / "articles.txt")]) == 0
    from_file = capsys.readouterr().out.splitlines()
    assert len(from_file) == 3

    assert predict.main([*options, "--text", texts[1]]) == 0
    assert capsys.readouterr().out == from_file[1] + "\n"

    monkeypatch.setattr("sys.stdin", io.StringIO(texts[2] + "\n"))
    assert predict.main([*options, "--input", "-"]) == 0
    assert capsys.readouterr().out == from_file[2] + "\n"

    assert predict.main([*options, "--text", "  "]) == 2
    assert "--text: empty article" in caplog.text


def test_a_parquet_input_with_its_own_column_names(model_dir, tmp_path, capsys):
    import datasets

    examples = read_examples(str(SAMPLE / "test.tsv"))[:4]
    rows = [{"article": e.news, "highlights": e.summary} for e in examples]
    datasets.Dataset.from_list(rows).to_parquet(tmp_path / "news.parquet")
    options = ["--model", str(model_dir), "--num-beams", "2", "--max-length", "12"]
    output = tmp_path / "predictions.tsv"

    returncode = predict.main(
        [*options, "--input", str(tmp_path / "news.parquet"), "--output", str(output)]
        + ["--text-column", "article", "--summary-column", "highlights"]
    )

    assert returncode == 0
    with open(output, encoding="utf-8", newline="") as file:
        written = list(csv.DictReader(file, delimiter="\t"))
    assert [row["news"] for row in written] == [e.news for e in examples]
    assert [row["reference"] for row in written] == [e.summary for e in examples]
    assert "4 articles with references" in capsys.readouterr().out
