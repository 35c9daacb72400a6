"""Hostile or careless data files: each is read correctly or refused in one line naming it.

Stray quotes, files that are not files, legacy Korean encodings, huge fields and text the
tokenizer cannot represent; every case here once read wrongly or crashed with a traceback.
"""

import logging
from pathlib import Path

import pytest
from etils import epath
from gcs_emulator import BUCKET

from kobart_flax import predict
from kobart_flax.data_io import DataError, Example, read_examples, write_tsv
from kobart_flax.tokenization import encode_examples, load_tokenizer

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample"
ROWS = 40


def sample_file(tmp_path, suffix: str = ".tsv") -> tuple[Path, list[Example]]:
    """40 sample rows as write_tsv (pandas) writes them: many fields quoted, quotes doubled."""
    examples = read_examples(str(SAMPLE / "test.tsv"))[:ROWS]
    path = tmp_path / f"data{suffix}"
    write_tsv(str(path), examples)
    if suffix == ".csv":
        # The same rows with commas: rewrite through csv so quoting follows the new delimiter.
        import csv

        with path.open("w", encoding="utf-8", newline="") as file:
            writer = csv.writer(file, lineterminator="\n")
            writer.writerows([("news", "summary"), *((e.news, e.summary) for e in examples)])
    return path, examples


def with_stray_quote(path: Path, line: int, column: int = 0) -> int:
    """Puts one '"' at the start of an unquoted field, as a careless edit would: the field of
    ``column`` on ``line`` or, if that one is quoted, on the next line where it is not.

    Returns the line edited.
    """
    lines = path.read_text(encoding="utf-8").split("\n")
    delimiter = "\t" if path.suffix == ".tsv" else ","
    while lines[line - 1].rsplit(delimiter, 1)[column].startswith('"'):
        line += 1
    fields = lines[line - 1].rsplit(delimiter, 1)
    fields[column] = f'"{fields[column]}'
    lines[line - 1] = delimiter.join(fields)
    path.write_text("\n".join(lines), encoding="utf-8")
    return line


def test_sample_rows_hold_quoted_fields_with_doubled_quotes(tmp_path):
    # The stray-quote tests below are only meaningful if later rows hold quotes to pair with.
    path, _ = sample_file(tmp_path)
    assert path.read_text(encoding="utf-8").count('""') > 10


@pytest.mark.parametrize("column", [0, 1])
def test_a_stray_quote_is_an_error_at_its_line_not_a_merge_of_rows(tmp_path, column):
    path, _ = sample_file(tmp_path)
    assert with_stray_quote(path, 3, column) == 3
    with pytest.raises(DataError) as raised:
        read_examples(str(path))
    message = str(raised.value)
    assert message.startswith(f"{path}:3: ")
    assert "quote" in message and "\n" not in message


def test_skipping_a_stray_quote_keeps_every_other_row(tmp_path, caplog):
    path, examples = sample_file(tmp_path)
    assert with_stray_quote(path, 3) == 3
    with caplog.at_level(logging.WARNING, logger="kobart_flax.data_io"):
        read = read_examples(str(path), bad_rows="skip")
    assert [(e.news, e.summary) for e in read] == [
        (e.news, e.summary) for index, e in enumerate(examples) if index != 1
    ]
    assert f"skipped 1 bad row(s): {path}:3: " in caplog.text


def test_predict_input_with_a_stray_quote_is_an_error(tmp_path):
    path, _ = sample_file(tmp_path)
    line = with_stray_quote(path, 7)
    with pytest.raises(DataError, match=f"^{path}:{line}: "):
        read_examples(str(path), require_summary=False)


@pytest.mark.parametrize("suffix", [".tsv", ".csv"])
def test_demo_file_tab_refuses_a_stray_quote(tmp_path, suffix):
    from kobart_flax.data_io import read_articles

    path, examples = sample_file(tmp_path, suffix)
    assert [e.news for e in read_articles(str(path))] == [e.news for e in examples]
    line = with_stray_quote(path, 6)
    with pytest.raises(DataError, match=f"^{path}:{line}: "):
        read_articles(str(path))


@pytest.mark.parametrize("delimiter", ["\t", ","])
def test_a_field_starting_with_a_quoted_phrase_keeps_its_quotes(tmp_path, delimiter):
    from kobart_flax.data_io import read_articles

    suffix = ".tsv" if delimiter == "\t" else ".csv"
    news = '"경제가 어렵다" 라고 말했다'
    rows = [f"news{delimiter}summary", f"{news}{delimiter}요약", f"기사{delimiter}요약 둘"]
    path = tmp_path / f"a{suffix}"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    read = read_articles(str(path))
    assert [(e.news, e.summary) for e in read] == [(news, "요약"), ("기사", "요약 둘")]
    if suffix == ".tsv":
        assert read_examples(str(path))[0].news == news


def test_an_unterminated_quote_is_an_error_at_its_line(tmp_path):
    path = tmp_path / "a.tsv"
    path.write_text('news\tsummary\n기사\t요약\n"따옴표가 안 닫힌 기사\t요약\n', encoding="utf-8")
    with pytest.raises(DataError, match=f"^{path}:3: .*quote"):
        read_examples(str(path))


def test_a_quoted_field_may_still_span_lines(tmp_path):
    # write_tsv (like pandas) quotes a field holding a newline; that must keep reading.
    examples = [Example('첫 줄\n둘째 줄 "인용"\t탭', "요약", "x:2"), Example("기사", "요약", "")]
    path = tmp_path / "a.tsv"
    write_tsv(str(path), examples)
    read = read_examples(str(path))
    assert [(e.news, e.summary, e.origin) for e in read] == [
        ('첫 줄\n둘째 줄 "인용"\t탭', "요약", f"{path}:2"),
        ("기사", "요약", f"{path}:4"),
    ]


@pytest.mark.parametrize("suffix", [".tsv", ".csv"])
def test_a_ten_megabyte_field_reads_whole(tmp_path, suffix):
    from kobart_flax.data_io import read_articles

    delimiter = "\t" if suffix == ".tsv" else ","
    news = "가" * 10_000_000
    path = tmp_path / f"big{suffix}"
    path.write_text(f"news{delimiter}summary\n{news}{delimiter}요약\n", encoding="utf-8")
    assert [(len(e.news), e.summary) for e in read_articles(str(path))] == [(len(news), "요약")]


def one_line_error(path: str, **kwargs) -> str:
    with pytest.raises(DataError) as raised:
        read_examples(path, **kwargs)
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_a_missing_file_is_named_with_what_is_expected(tmp_path):
    path = str(tmp_path / "trian.tsv")
    message = one_line_error(path)
    assert message.startswith(f"{path}: no such file")
    assert ".tsv" in message and ".jsonl" in message


@pytest.mark.parametrize("name", ["data", "data.tsv"])
def test_a_directory_is_named_with_what_is_expected(tmp_path, name):
    (tmp_path / name).mkdir()
    path = str(tmp_path / name)
    message = one_line_error(path)
    assert message.startswith(f"{path}: a directory")
    assert ".tsv" in message and "save_to_disk" in message


def test_an_unsupported_suffix_is_a_data_error(tmp_path):
    path = tmp_path / "a.xlsx"
    path.write_bytes(b"PK\x03\x04")
    message = one_line_error(str(path))
    assert message.startswith(f"{path}: unsupported suffix '.xlsx'")


def test_predict_reports_a_directory_in_one_line_with_rc_2(tmp_path, caplog):
    code = predict.main(["--model", str(tmp_path / "no-model"), "--input", str(tmp_path)])
    assert code == 2
    assert f"{tmp_path}: a directory" in caplog.text


CP949_TSV = "news\tsummary\n경제가 어렵다\t요약\n".encode("cp949")


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("a.tsv", CP949_TSV),
        ("a.jsonl", '{"news": "경제", "summary": "요약"}\n'.encode("cp949")),
        ("a.txt", "경제가 어렵다\n".encode("cp949")),
    ],
)
def test_a_cp949_file_gets_a_conversion_hint(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    message = one_line_error(str(path), require_summary=name != "a.txt")
    line = 2 if name == "a.tsv" else 1  # the TSV's header is ASCII; its first row is not
    assert message.startswith(f"{path}:{line}: invalid UTF-8")
    assert "CP949" in message and "iconv -f cp949 -t utf-8" in message


def test_random_bad_bytes_get_no_encoding_hint(tmp_path):
    path = tmp_path / "a.tsv"
    path.write_bytes("news\tsummary\n기사\t요약\n".encode() + b"\xff\xff\t\xc3\n")
    assert one_line_error(str(path)) == f"{path}:3: invalid UTF-8"


@pytest.mark.parametrize("text", ["\u200b", "\u200b \ufeff\u200b", "\u3164"])
def test_invisible_only_text_is_empty_under_the_bad_row_policy(tmp_path, text, caplog):
    path = tmp_path / "a.tsv"
    path.write_text(f"news\tsummary\n기사\t요약\n{text}\t요약\n", encoding="utf-8")
    assert one_line_error(str(path)).startswith(f"{path}:3: empty 'news'")
    with caplog.at_level(logging.WARNING, logger="kobart_flax.data_io"):
        assert [e.news for e in read_examples(str(path), bad_rows="skip")] == ["기사"]
    assert f"{path}:3: empty 'news'" in caplog.text


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(str(SAMPLE / "tokenizer"))


@pytest.mark.parametrize(
    ("news", "summary", "field"),
    [("😀😀", "요약", "news"), ("기사", "🙂 \u200b", "summary"), ("\u200b", "요약", "news")],
)
def test_text_the_tokenizer_cannot_represent_is_refused_by_origin(tokenizer, news, summary, field):
    examples = [Example("기사", "요약", "a.tsv:2"), Example(news, summary, "a.tsv:3")]
    with pytest.raises(DataError) as raised:
        encode_examples(tokenizer, examples, 32, 16)
    message = str(raised.value)
    assert message.startswith(f"a.tsv:3: {field!r} ")
    assert "<unk>" in message


def test_text_with_some_unknown_characters_still_encodes(tokenizer):
    (encoded,) = encode_examples(tokenizer, [Example("기사 😀", "요약 🙂", "a.tsv:2")], 32, 16)
    assert tokenizer.unk_token_id in encoded.input_ids


@pytest.mark.usefixtures("gcs_emulator")
def test_gs_paths_read_and_refuse_the_same():
    from kobart_flax.data_io import read_articles

    data = f"gs://{BUCKET}/data"
    assert len(read_examples(f"{data}/train.tsv")) == 96
    csv_path = epath.Path(f"{data}/articles.csv")
    csv_path.write_text('news\n"첫 기사, 쉼표"\n"경제가 어렵다" 라고\n', encoding="utf-8")
    assert [e.news for e in read_articles(str(csv_path))] == [
        "첫 기사, 쉼표",
        '"경제가 어렵다" 라고',
    ]
    assert one_line_error(f"{data}/trian.tsv").startswith(f"gs://{BUCKET}/data/trian.tsv: no such")
    assert one_line_error(data).startswith(f"{data}: a directory")
    broken = epath.Path(f"{data}/broken.tsv")
    broken.write_text('news\tsummary\n"열린 따옴표\t요약\n기사\t요약\n', encoding="utf-8")
    assert one_line_error(str(broken)).startswith(f"{broken}:2: column 1 opens a '\"'")
