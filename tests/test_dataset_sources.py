"""Hugging Face ``datasets`` sources: parquet, Arrow, CSV, save_to_disk, hub layout."""

import logging

import datasets
import pytest
from tiny_models import SAMPLE, TINY_RUN_SHAPES, write_tiny_data

from kobart_flax.data_io import DataError, read_examples
from kobart_flax.dataset_sources import (
    is_dataset_source,
    load_hub_dataset,
    parse_source,
    read_dataset_examples,
)
from kobart_flax.overrides import apply_overrides, load_config
from kobart_flax.train import train_and_evaluate

ROWS = 12


@pytest.fixture(scope="module")
def sample_rows() -> list[dict[str, str]]:
    examples = read_examples(str(SAMPLE / "test.tsv"))[:ROWS]
    # Column names of a typical hub set, not the project's own.
    return [
        {"document": e.news, "abstractive": e.summary, "id": str(i)} for i, e in enumerate(examples)
    ]


def texts(examples):
    return [(example.news, example.summary) for example in examples]


def expected(rows):
    return [(row["document"], row["abstractive"]) for row in rows]


READ = dict(text_column="document", summary_column="abstractive")


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".arrow"])
def test_single_files_read_in_order_with_mapped_columns(tmp_path, sample_rows, suffix):
    dataset = datasets.Dataset.from_list(sample_rows)
    path = tmp_path / f"data{suffix}"
    if suffix == ".parquet":
        dataset.to_parquet(path)
    elif suffix == ".csv":
        dataset.to_csv(path, index=False)
    else:
        dataset.save_to_disk(tmp_path / "saved")
        path = next((tmp_path / "saved").glob("*.arrow"))

    examples = read_dataset_examples(str(path), **READ)

    assert texts(examples) == expected(sample_rows)
    assert examples[3].origin == f"{path} split=train row=3"
    assert is_dataset_source(str(path))


def test_save_to_disk_directories_and_their_splits(tmp_path, sample_rows):
    splits = datasets.DatasetDict(
        train=datasets.Dataset.from_list(sample_rows[:8]),
        validation=datasets.Dataset.from_list(sample_rows[8:]),
    )
    splits.save_to_disk(tmp_path / "dict")
    datasets.Dataset.from_list(sample_rows).save_to_disk(tmp_path / "single")

    assert texts(read_dataset_examples(str(tmp_path / "dict"), **READ)) == expected(sample_rows[:8])
    validation = read_dataset_examples(f"{tmp_path / 'dict'}@validation", **READ)
    assert texts(validation) == expected(sample_rows[8:])
    assert validation[0].origin == f"{tmp_path / 'dict'}@validation split=validation row=0"
    assert len(read_dataset_examples(str(tmp_path / "single"), **READ)) == ROWS
    with pytest.raises(DataError, match=r"no split 'test'; it has 'train', 'validation'"):
        read_dataset_examples(f"{tmp_path / 'dict'}@test", **READ)


def test_a_local_repo_in_hub_layout_loads_through_the_hub_code_path(tmp_path, sample_rows):
    # What hf://datasets/OWNER/NAME@validation resolves to, with the repo on disk.
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    datasets.Dataset.from_list(sample_rows[:8]).to_parquet(repo / "data" / "train-0.parquet")
    datasets.Dataset.from_list(sample_rows[8:]).to_parquet(repo / "data" / "validation-0.parquet")

    dataset = load_hub_dataset(str(repo), None, "validation")

    assert dataset["document"] == [row["document"] for row in sample_rows[8:]]
    with pytest.raises(ValueError, match=r"no split 'test'; it has 'train', 'validation'"):
        load_hub_dataset(str(repo), None, "test")


def test_hub_source_syntax():
    parsed = parse_source("hf://datasets/someone/ko-news:abstractive@validation")
    assert (parsed.kind, parsed.location, parsed.config, parsed.split) == (
        "hub",
        "someone/ko-news",
        "abstractive",
        "validation",
    )
    plain = parse_source("hf://datasets/someone/ko-news")
    assert (plain.config, plain.split) == (None, "train")
    with pytest.raises(DataError, match="hf://datasets/OWNER/NAME"):
        parse_source("hf://datasets/ko-news")
    assert not is_dataset_source(str(SAMPLE / "train.tsv"))


def test_an_unreachable_hub_dataset_is_one_line_with_the_offline_hint(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError) as raised:
        read_dataset_examples("hf://datasets/nobody/not-cached@validation", **READ)
    message = str(raised.value)
    assert message.startswith("hf://datasets/nobody/not-cached@validation: ")
    assert "HF_HUB_OFFLINE is set" in message and "\n" not in message


def test_bad_rows_name_source_split_and_row(tmp_path, sample_rows):
    rows = [dict(row) for row in sample_rows[:6]]
    rows[1]["document"] = None
    rows[2]["abstractive"] = "   "
    rows[4]["document"] = ""
    path = tmp_path / "bad.parquet"
    datasets.Dataset.from_list(rows).to_parquet(path)

    with pytest.raises(DataError, match=rf"^{path} split=train row=1: text is missing \(null\)$"):
        read_dataset_examples(str(path), **READ)
    kept = read_dataset_examples(str(path), bad_rows="skip", **READ)
    assert [example.origin.rsplit("=", 1)[1] for example in kept] == ["0", "3", "5"]


def test_a_non_text_column_is_a_bad_row(tmp_path):
    path = tmp_path / "numbers.parquet"
    datasets.Dataset.from_list(
        [{"news": 1, "summary": "요약"}, {"news": 2, "summary": "요약"}]
    ).to_parquet(path)
    with pytest.raises(DataError, match=r"row=0: text is int, not text"):
        read_dataset_examples(str(path), text_column="news")


def test_a_wrong_column_name_lists_the_columns_that_exist(tmp_path, sample_rows):
    path = tmp_path / "data.parquet"
    datasets.Dataset.from_list(sample_rows).to_parquet(path)
    with pytest.raises(DataError) as raised:
        read_dataset_examples(str(path))  # the defaults, news / summary
    assert str(raised.value) == (
        f"{path} split=train: no column 'news'; it has 'document', 'abstractive', 'id' "
        "(set data.text_column / data.summary_column)"
    )


def test_articles_to_summarize_need_no_summary_column(tmp_path, sample_rows):
    path = tmp_path / "articles.parquet"
    datasets.Dataset.from_list([{"document": row["document"]} for row in sample_rows]).to_parquet(
        path
    )
    examples = read_dataset_examples(str(path), require_summary=False, **READ)
    assert [example.summary for example in examples] == [""] * ROWS


@pytest.mark.slow  # three training runs
def test_training_from_parquet_and_a_saved_dataset_equals_training_from_tsv(tmp_path, caplog):
    write_tiny_data(tmp_path / "tsv", 48, 8)
    columns = {"news": "document", "summary": "abstractive"}
    for name in ("train", "test"):
        rows = [
            {columns["news"]: e.news, columns["summary"]: e.summary}
            for e in read_examples(str(tmp_path / "tsv" / f"{name}.tsv"))
        ]
        datasets.Dataset.from_list(rows).to_parquet(tmp_path / "parquet" / f"{name}.parquet")
    saved = datasets.DatasetDict(
        train=datasets.load_dataset(
            "parquet", data_files=str(tmp_path / "parquet" / "train.parquet"), split="train"
        ),
        validation=datasets.load_dataset(
            "parquet", data_files=str(tmp_path / "parquet" / "test.parquet"), split="train"
        ),
    )
    saved.save_to_disk(tmp_path / "saved")
    common = [
        *TINY_RUN_SHAPES,
        "train.max_steps=3",
        "train.eval_every=0",
        "train.rouge_every=0",
        "train.checkpoint_every=0",
        f"data.cache_dir={tmp_path / 'token_cache'}",
    ]
    mapped = ["data.text_column=document", "data.summary_column=abstractive"]

    def train(name: str, train_path: str, eval_path: str, *extra: str):
        overrides = [
            *common,
            f"data.train_path={train_path}",
            f"data.eval_path={eval_path}",
            f"train.workdir={tmp_path / name}",
            *extra,
        ]
        caplog.clear()
        with caplog.at_level(logging.INFO):
            result = train_and_evaluate(apply_overrides(load_config("configs/tiny.py"), overrides))
        return result, caplog.text

    tsv, tsv_log = train(
        "from_tsv", *(str(tmp_path / "tsv" / f) for f in ("train.tsv", "test.tsv"))
    )
    parquet, parquet_log = train(
        "from_parquet",
        *(str(tmp_path / "parquet" / f) for f in ("train.parquet", "test.parquet")),
        *mapped,
    )
    from_saved, saved_log = train(
        "from_saved", str(tmp_path / "saved"), f"{tmp_path / 'saved'}@validation", *mapped
    )

    assert "cached the tokenized examples" in tsv_log
    # The same texts in the same order: the TSV run's cache entry serves the others.
    assert "tokenized examples from the cache" in parquet_log
    assert "tokenized examples from the cache" in saved_log
    assert len(tsv.train_losses) == 3
    assert parquet.train_losses == tsv.train_losses
    assert from_saved.train_losses == tsv.train_losses
