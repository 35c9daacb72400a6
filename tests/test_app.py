"""The demo's handlers, called directly and through its API with gradio_client.

A tiny random model with the bundled tokenizer stands in for a trained one: the tests check
what the page does with text (token counts, truncation, errors, files), not summary quality.
"""

import csv
import re
import socket
from pathlib import Path

import gradio as gr
import jax
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from tiny_models import save_tiny_checkpoint, save_tiny_model

from kobart_flax import FlaxBartForConditionalGeneration
from kobart_flax.data_io import DataError, read_articles, read_examples
from kobart_flax.demo import (
    QUICKSTART_MODEL,
    SUMMARIZER_CACHE_SIZE,
    GenerationControls,
    LoadedModel,
    SummaryService,
    build_demo,
    load_model,
    main,
    parse_args,
)
from kobart_flax.loading import ModelLoadError

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample"
# One set of settings for every test: each new combination compiles, seconds on a CPU.
CONTROLS = (2, 10, 1.0, 0)
# A single source bucket, so one program serves every article.
MAX_SOURCE_LENGTH = 64
ENGLISH = "The city council approved a new budget for public libraries on Monday evening."


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def demo_articles() -> list[str]:
    return [example.news for example in read_examples(str(SAMPLE / "demo_articles.tsv"))]


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> SummaryService:
    model_dir = save_tiny_model(tmp_path_factory.mktemp("tiny_model"))
    # Batch size 1 for files too: the same compiled program as single articles.
    service = SummaryService(load_model(str(model_dir)), MAX_SOURCE_LENGTH, file_batch_size=1)
    service.warm_up(GenerationControls.from_ui(*CONTROLS))
    return service


@pytest.fixture
def failing_generation(service, monkeypatch):
    """The next generation with CONTROLS raises, as a device or XLA failure would."""

    def fail(*args, **kwargs):
        raise RuntimeError("device lost")

    summarizer = service.summarizer(GenerationControls.from_ui(*CONTROLS), batch_size=1)
    monkeypatch.setattr(summarizer, "summarize", fail)
    return monkeypatch


def write_articles(path: Path, rows: list[tuple[str, ...]], delimiter: str) -> Path:
    with path.open("w", encoding="utf-8", newline="") as file:
        csv.writer(file, delimiter=delimiter, lineterminator="\n").writerows(rows)
    return path


def test_the_first_request_after_warm_up_does_not_compile(service):
    summary, note = service.summarize_article(demo_articles()[0], *CONTROLS)
    assert summary.strip()
    assert "Input: " in note and " tokens." in note
    assert "Generated in " in note
    assert "compiling" not in note


def test_new_settings_compile_once(service):
    shorter = (CONTROLS[0], CONTROLS[1] - 1, *CONTROLS[2:])
    assert "compiling" in service.summarize_article(ENGLISH, *shorter)[1]
    assert "compiling" not in service.summarize_article(ENGLISH, *shorter)[1]


@pytest.mark.parametrize("article", ["", "  \n\t", None])
def test_an_empty_article_gets_a_message(service, article):
    summary, note = service.summarize_article(article, *CONTROLS)
    assert summary == ""
    assert "Paste or type an article" in note


def test_a_long_article_is_truncated_with_a_notice(service):
    short, long = demo_articles()[0][:40], " ".join(demo_articles())
    assert "Truncated" not in service.summarize_article(short, *CONTROLS)[1]
    summary, note = service.summarize_article(long, *CONTROLS)
    assert summary
    assert f"**Truncated**: the model reads at most {MAX_SOURCE_LENGTH} tokens" in note


def test_non_korean_text_is_summarized(service):
    """English through a Korean tokenizer: the page's summary is the model's own generation
    on the text's tokens, and the note counts those tokens."""
    tokenizer, model = service.loaded.tokenizer, service.loaded.model
    tokens = tokenizer(ENGLISH, add_special_tokens=False)["input_ids"]
    # Spelled out letter by letter, nothing lost to <unk>: that is what the model reads...
    assert tokenizer.decode(tokens) == ENGLISH
    # ... up to MAX_SOURCE_LENGTH with <s> and </s>: one letter a token overflows it.
    assert len(tokens) > MAX_SOURCE_LENGTH - 2
    ids = [tokenizer.bos_token_id, *tokens[: MAX_SOURCE_LENGTH - 2], tokenizer.eos_token_id]
    input_ids = np.array([ids], np.int32)
    num_beams, max_new_tokens, length_penalty, no_repeat_ngram_size = CONTROLS
    generated = model.generate(
        input_ids,
        np.ones_like(input_ids),
        max_new_tokens=max_new_tokens,
        num_beams=num_beams,
        length_penalty=length_penalty,
        no_repeat_ngram_size=no_repeat_ngram_size,
    ).sequences[0]

    summary, note = service.summarize_article(ENGLISH, *CONTROLS)

    assert summary == tokenizer.decode(generated, skip_special_tokens=True).strip()
    assert note.startswith(f"Input: {len(tokens)} tokens.")


def test_an_empty_summary_is_explained(service, monkeypatch):
    summarizer = service.summarizer(GenerationControls.from_ui(*CONTROLS), batch_size=1)
    monkeypatch.setattr(summarizer, "summarize", lambda params, texts, progress: [""])
    summary, note = service.summarize_article(ENGLISH, *CONTROLS)
    assert summary == ""
    assert "The model generated no text, only the end of the sequence. Generated in" in note


def test_a_failed_request_shows_an_error_and_the_next_one_works(service, failing_generation):
    with pytest.raises(gr.Error, match="Summarization failed: RuntimeError: device lost"):
        service.summarize_article(ENGLISH, *CONTROLS)
    failing_generation.undo()
    assert service.summarize_article(ENGLISH, *CONTROLS)[0]


def test_invalid_settings_are_an_error_not_a_crash(service):
    with pytest.raises(gr.Error, match="num_beams must be >= 1"):
        service.summarize_article(ENGLISH, 0, 10, 1.0, 0)


def test_summarizers_are_cached_per_settings_and_bounded(service):
    fresh = SummaryService(service.loaded, MAX_SOURCE_LENGTH)  # not the shared, compiled cache
    first = fresh.summarizer(GenerationControls(num_beams=1), batch_size=1)
    assert fresh.summarizer(GenerationControls(num_beams=1), batch_size=1) is first
    for max_new_tokens in range(8, 8 + SUMMARIZER_CACHE_SIZE):
        fresh.summarizer(GenerationControls(max_new_tokens=max_new_tokens), batch_size=1)
    assert len(fresh._summarizers) == SUMMARIZER_CACHE_SIZE
    assert fresh.summarizer(GenerationControls(num_beams=1), batch_size=1) is not first


def test_a_tsv_and_a_csv_give_the_same_predictions_in_order(service, tmp_path):
    examples = read_examples(str(SAMPLE / "test.tsv"))[:3]
    rows = [("news", "summary"), *((e.news, e.summary) for e in examples)]
    results = {}
    for delimiter, suffix in (("\t", ".tsv"), (",", ".csv")):
        path = write_articles(tmp_path / f"articles{suffix}", rows, delimiter)
        note, preview, output = service.summarize_file(str(path), *CONTROLS)
        assert note.startswith("Summarized 3 articles in ")
        assert [row[1] for row in preview] == [row["prediction"] for row in read_rows(output)]
        results[suffix] = read_rows(output)
    assert results[".tsv"] == results[".csv"]
    assert [row["news"] for row in results[".tsv"]] == [e.news for e in examples]
    assert [row["reference"] for row in results[".tsv"]] == [e.summary for e in examples]
    assert all(row["prediction"] for row in results[".tsv"])


def read_rows(path: str) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as file:
        return list(csv.DictReader(file, delimiter="\t"))


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([("news",), ("첫 기사",), ("  ",)], ":3: empty 'news'"),
        ([("article", "summary"), ("기사", "요약")], ":1: expected a header row with exactly"),
        ([("news", "summary"), ("기사", "요약", "덤")], ":2: expected 2 columns (news, summary)"),
        ([("news",)], ":1: no examples"),
    ],
)
def test_csv_errors_read_like_tsv_errors(tmp_path, rows, message):
    for delimiter, suffix in (("\t", ".tsv"), (",", ".csv")):
        path = write_articles(tmp_path / f"articles{suffix}", rows, delimiter)
        with pytest.raises(DataError, match=re.escape(f"{path}{message}")):
            read_articles(str(path))


def test_a_bad_file_is_named_without_the_upload_directory(service, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(b"news\n\xff\xfe broken\n")
    with pytest.raises(gr.Error) as raised:
        service.summarize_file(str(path), *CONTROLS)
    assert raised.value.message == "bad.csv:2: invalid UTF-8"
    assert "Upload a .tsv or .csv" in service.summarize_file(None, *CONTROLS)[0]


def test_a_missing_quickstart_model_says_how_to_make_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match="python train_flax.py --config configs/tiny.py"):
        load_model(QUICKSTART_MODEL)
    assert main(["--model", str(tmp_path / "no" / "model")]) == 2
    assert main(["--checkpoint", str(tmp_path / "no" / "checkpoints")]) == 2


def test_an_orbax_checkpoint_serves_its_params_and_tokenizer(tmp_path):
    saved = save_tiny_checkpoint(tmp_path / "run")
    loaded = load_model(str(tmp_path / "run" / "checkpoints"))
    assert loaded.source == str(tmp_path / "run" / "checkpoints")
    assert loaded.model.config.d_model == saved.config.d_model
    jax.tree.map(np.testing.assert_array_equal, loaded.model.params, saved.params)
    assert loaded.tokenizer("요약", add_special_tokens=False)["input_ids"]


def test_the_server_binds_localhost_unless_told_otherwise():
    args = parse_args([])
    assert (args.host, args.share, args.model) == ("127.0.0.1", False, QUICKSTART_MODEL)


@pytest.fixture(scope="module")
def client(service):
    demo = build_demo(service)
    demo.queue(default_concurrency_limit=1)
    demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True)
    yield Client(demo.local_url, verbose=False)
    demo.close()


def test_api_summarizes_an_article(client):
    summary, note = client.predict(demo_articles()[1], *CONTROLS, api_name="/summarize")
    assert summary.strip()
    assert "Input: " in note


def test_api_keeps_serving_after_a_failed_request(client, failing_generation):
    with pytest.raises(AppError, match="Summarization failed: RuntimeError: device lost"):
        client.predict(ENGLISH, *CONTROLS, api_name="/summarize")
    failing_generation.undo()
    assert client.predict(ENGLISH, *CONTROLS, api_name="/summarize")[0]
    assert "Paste or type" in client.predict("", *CONTROLS, api_name="/summarize")[1]


def test_api_summarizes_a_file_for_download(client, tmp_path):
    examples = read_examples(str(SAMPLE / "test.tsv"))[:2]
    rows = [("news",), *((e.news,) for e in examples)]
    path = write_articles(tmp_path / "articles.csv", rows, ",")
    note, preview, output = client.predict(
        handle_file(str(path)), *CONTROLS, api_name="/summarize_file"
    )
    assert note.startswith("Summarized 2 articles")
    assert Path(output).name == "articles.predictions.tsv"
    predictions = [row["prediction"] for row in read_rows(output)]
    assert [row[1] for row in preview["data"]] == predictions


def test_the_summary_length_slider_stops_at_the_models_positions(service):
    from transformers import BartConfig

    config = BartConfig.from_dict(service.loaded.model.config.to_dict())
    config.max_position_embeddings = 66  # 64 usable: the start token and 63 summary tokens
    model = FlaxBartForConditionalGeneration(config)
    loaded = LoadedModel(model, service.loaded.tokenizer, "short-positions")
    page = build_demo(SummaryService(loaded, max_source_length=64))
    (slider,) = [
        block
        for block in page.blocks.values()
        if isinstance(block, gr.Slider) and block.label == "Max summary length (tokens)"
    ]
    assert (slider.maximum, slider.value) == (63, 63)
