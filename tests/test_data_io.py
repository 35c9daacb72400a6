"""Reading examples: the good formats, and every kind of bad row named by file and line."""

import json
import logging

import pytest

from kobart_flax.data_io import DataError, Example, read_examples, write_tsv

HEADER = b"news\tsummary\n"


def write(tmp_path, name: str, content: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


def read_error(path: str) -> str:
    with pytest.raises(DataError) as raised:
        read_examples(path)
    return str(raised.value)


def test_reads_tsv_stripping_fields_and_recording_origins(tmp_path):
    path = write(
        tmp_path, "a.tsv", HEADER + "  기사 하나 \t요약 하나\n기사 둘\t 요약 둘 \n".encode()
    )
    assert read_examples(path) == [
        Example("기사 하나", "요약 하나", f"{path}:2"),
        Example("기사 둘", "요약 둘", f"{path}:3"),
    ]


def test_tsv_columns_may_come_in_either_order(tmp_path):
    path = write(tmp_path, "a.tsv", "summary\tnews\n요약\t기사\n".encode())
    assert read_examples(path) == [Example("기사", "요약", f"{path}:2")]


def test_tsv_unquotes_fields_the_way_pandas_quotes_them(tmp_path):
    # What DataFrame.to_csv(sep="\t", index=False) writes for fields holding a tab, a newline
    # and double quotes: the field is quoted and inner quotes are doubled.
    content = HEADER + '"앞\t뒤"\t"그는 ""좋다""고\n말했다"\n기사\t요약\n'.encode()
    path = write(tmp_path, "a.tsv", content)
    examples = read_examples(path)
    assert [(e.news, e.summary) for e in examples] == [
        ("앞\t뒤", '그는 "좋다"고\n말했다'),
        ("기사", "요약"),
    ]
    # The second row starts on line 4 because the first one spans two lines.
    assert [e.origin for e in examples] == [f"{path}:2", f"{path}:4"]


def test_tsv_tolerates_crlf_bom_and_blank_lines(tmp_path):
    content = "\ufeffnews\tsummary\r\n기사\t요약\r\n\r\n기사 둘\t요약 둘\r\n".encode()
    path = write(tmp_path, "a.tsv", content)
    assert [(e.news, e.summary, e.origin) for e in read_examples(path)] == [
        ("기사", "요약", f"{path}:2"),
        ("기사 둘", "요약 둘", f"{path}:4"),
    ]


def test_write_tsv_round_trips_awkward_text(tmp_path):
    examples = [
        Example('"인용"으로 시작하는 기사', "탭\t포함", "x:1"),
        Example("줄\n바꿈과 \r 캐리지 리턴", '끝이 "따옴표"', "x:2"),
    ]
    path = str(tmp_path / "out.tsv")
    write_tsv(path, examples)
    assert [(e.news, e.summary) for e in read_examples(path)] == [
        (e.news, e.summary) for e in examples
    ]


def test_missing_column_is_reported_with_file_and_line(tmp_path):
    path = write(tmp_path, "a.tsv", HEADER + "기사\t요약\n요약 없는 기사\n".encode())
    assert read_error(path) == (
        f"{path}:3: expected 2 columns (news, summary), got 1; an unescaped newline inside a field?"
    )


def test_extra_column_suggests_an_unescaped_tab(tmp_path):
    path = write(tmp_path, "a.tsv", HEADER + "기사\t앞\t뒤\n".encode())
    assert read_error(path) == (
        f"{path}:2: expected 2 columns (news, summary), got 3; an unescaped tab inside a field?"
    )


def test_unescaped_newline_inside_a_field_is_caught(tmp_path):
    # The news field "첫 줄\n둘째 줄" was written without quoting: the first half is a row of
    # one column.
    path = write(tmp_path, "a.tsv", HEADER + "첫 줄\n둘째 줄\t요약\n".encode())
    message = read_error(path)
    assert message.startswith(f"{path}:2: expected 2 columns")
    assert "unescaped newline" in message


def test_unclosed_quote_is_an_error_at_its_line(tmp_path):
    # The csv module read on to the next line here (or to any later quote), merging rows.
    path = write(tmp_path, "a.tsv", HEADER + '"열린 따옴표\t요약\n기사\t요약\n'.encode())
    assert read_error(path) == (
        f"{path}:2: column 1 opens a '\"' that never closes; quote the whole field "
        '("..." with inner quotes doubled) or remove the stray quote'
    )


def test_quoted_field_spanning_lines_into_too_few_columns_names_the_lines(tmp_path):
    path = write(tmp_path, "a.tsv", HEADER + '"첫 줄\n둘째 줄"\n기사\t요약\n'.encode())
    message = read_error(path)
    assert message.startswith(f"{path}:2: expected 2 columns (news, summary), got 1")
    assert "spans lines 2-3" in message


@pytest.mark.parametrize(
    ("row", "field"),
    [("   \t요약", "news"), ("기사\t", "summary"), ("기사\t \t", None)],
)
def test_empty_fields_are_errors(tmp_path, row, field):
    path = write(tmp_path, "a.tsv", HEADER + f"기사\t요약\n{row}\n".encode())
    message = read_error(path)
    if field is None:  # Three columns: the column count is checked first.
        assert message.startswith(f"{path}:3: expected 2 columns")
    else:
        assert message == f"{path}:3: empty {field!r}"


def test_invalid_utf8_names_the_line(tmp_path):
    content = HEADER + "기사\t요약\n".encode() + b"\xff\xfe\t\xc3\n" + "기사\t요약\n".encode()
    path = write(tmp_path, "a.tsv", content)
    assert read_error(path) == f"{path}:3: invalid UTF-8"


def test_invalid_utf8_inside_a_quoted_multiline_field_names_its_own_line(tmp_path):
    content = HEADER + '"첫 줄\n둘째 '.encode() + b"\xff" + ' 줄"\t요약\n'.encode()
    path = write(tmp_path, "a.tsv", content)
    assert read_error(path) == f"{path}:3: invalid UTF-8"


def test_missing_header_is_an_error(tmp_path):
    path = write(tmp_path, "a.tsv", "기사\t요약\n".encode())
    message = read_error(path)
    assert message.startswith(f"{path}:1: expected a header row")
    assert "'기사'" in message


def test_extra_header_column_is_an_error_with_an_index_hint(tmp_path):
    path = write(tmp_path, "a.tsv", "\tnews\tsummary\n0\t기사\t요약\n".encode())
    message = read_error(path)
    assert message.startswith(f"{path}:1: expected a header row")
    assert "index=False" in message


def test_empty_file_is_an_error(tmp_path):
    path = write(tmp_path, "a.tsv", b"")
    assert read_error(path).startswith(f"{path}:1: empty file")


@pytest.mark.parametrize("bad_rows", ["error", "skip"])
def test_header_only_file_has_no_examples_under_any_policy(tmp_path, bad_rows):
    path = write(tmp_path, "a.tsv", HEADER)
    with pytest.raises(DataError, match=f"^{path}:1: no examples$"):
        read_examples(path, bad_rows=bad_rows)


def test_skip_policy_keeps_good_rows_and_warns_once(tmp_path, caplog):
    rows = ["좋은 기사\t요약", "빈 요약\t ", "하나\t둘\t셋", "또 좋은 기사\t요약 둘"]
    path = write(tmp_path, "a.tsv", HEADER + "\n".join(rows).encode() + b"\n\xff\tx\n")
    with caplog.at_level(logging.WARNING, logger="kobart_flax.data_io"):
        examples = read_examples(path, bad_rows="skip")
    assert [e.news for e in examples] == ["좋은 기사", "또 좋은 기사"]
    assert len(caplog.records) == 1
    warning = caplog.records[0].getMessage()
    assert "skipped 3 bad row(s)" in warning
    assert f"{path}:3: empty 'summary'" in warning
    assert f"{path}:4: expected 2 columns" in warning


def test_skip_policy_still_fails_when_nothing_is_left(tmp_path):
    path = write(tmp_path, "a.tsv", HEADER + "기사만\n".encode())
    with pytest.raises(DataError, match=r":1: no examples \(1 bad row\(s\) skipped\)"):
        read_examples(path, bad_rows="skip")


def test_unknown_policy_and_suffix_are_value_errors(tmp_path):  # DataError is a ValueError
    path = write(tmp_path, "a.tsv", HEADER + "기사\t요약\n".encode())
    with pytest.raises(ValueError, match="bad_rows"):
        read_examples(path, bad_rows="ignore")
    with pytest.raises(ValueError, match="unsupported suffix '.xlsx'"):
        read_examples(write(tmp_path, "a.xlsx", b"news,summary\n"))


def jsonl(*records) -> bytes:
    return "".join(
        (record if isinstance(record, str) else json.dumps(record, ensure_ascii=False)) + "\n"
        for record in records
    ).encode()


def test_reads_jsonl_ignoring_extra_fields_and_blank_lines(tmp_path):
    content = jsonl(
        {"id": 7, "news": " 기사\u2028계속 ", "summary": "요약"},
        "",
        {"news": "둘", "summary": "요약"},
    )
    path = write(tmp_path, "a.jsonl", content)
    assert read_examples(path) == [
        Example("기사\u2028계속", "요약", f"{path}:1"),  # U+2028 is text, not a line break.
        Example("둘", "요약", f"{path}:3"),
    ]


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [
        ('{"news": "기사", "summary": ', "invalid JSON"),
        ('["기사", "요약"]', "expected a JSON object, got list"),
        ('{"news": "기사"}', "missing field 'summary'"),
        ('{"news": 3, "summary": "요약"}', "field 'news' must be a string, got int"),
        ('{"news": "기사", "summary": "  "}', "empty 'summary'"),
        ('{"news": "\\udc80", "summary": "요약"}', "unpaired surrogate"),
    ],
)
def test_bad_jsonl_lines_are_reported_with_file_and_line(tmp_path, bad_line, expected):
    path = write(tmp_path, "a.jsonl", jsonl({"news": "기사", "summary": "요약"}, bad_line))
    message = read_error(path)
    assert message.startswith(f"{path}:2: ")
    assert expected in message


def test_jsonl_invalid_utf8_names_the_line(tmp_path):
    content = jsonl({"news": "기사", "summary": "요약"}) + b'{"news": "\xff", "summary": "x"}\n'
    path = write(tmp_path, "a.jsonl", content)
    assert read_error(path).startswith(f"{path}:2: invalid UTF-8")


def test_empty_jsonl_file_has_no_examples(tmp_path):
    path = write(tmp_path, "a.jsonl", b"\n")
    with pytest.raises(DataError, match=":1: no examples"):
        read_examples(path, bad_rows="skip")


def test_articles_without_summaries_for_prediction(tmp_path):
    tsv = tmp_path / "articles.tsv"
    tsv.write_text("news\n첫 기사입니다.\n둘째 기사입니다.\n", encoding="utf-8")
    jsonl = tmp_path / "articles.jsonl"
    jsonl.write_text('{"news": "첫 기사"}\n{"news": "둘째", "summary": "요약"}\n', encoding="utf-8")
    txt = tmp_path / "articles.txt"
    txt.write_text("첫 기사입니다.\n둘째 기사입니다.\n", encoding="utf-8")

    from_tsv = read_examples(str(tsv), require_summary=False)
    assert [(e.news, e.summary) for e in from_tsv] == [
        ("첫 기사입니다.", ""),
        ("둘째 기사입니다.", ""),
    ]
    from_jsonl = read_examples(str(jsonl), require_summary=False)
    assert [(e.news, e.summary) for e in from_jsonl] == [("첫 기사", ""), ("둘째", "요약")]
    from_txt = read_examples(str(txt), require_summary=False)
    assert [e.origin for e in from_txt] == [f"{txt}:1", f"{txt}:2"]
    # Training data still needs its summaries.
    with pytest.raises(DataError, match=r"articles\.tsv:1: expected a header"):
        read_examples(str(tsv))


def test_blank_line_in_article_file_is_reported(tmp_path):
    txt = tmp_path / "articles.txt"
    txt.write_text("첫 기사입니다.\n\n셋째 기사입니다.\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"articles\.txt:2: empty 'news'"):
        read_examples(str(txt), require_summary=False)


def test_write_tsv_quotes_a_lone_carriage_return(tmp_path):
    # csv.writer leaves "a\rb" unquoted, and every reader ends a line at the "\r".
    examples = [Example("앞\r뒤", "요약", "x:1"), Example("기사", "요약\r끝", "x:2")]
    path = str(tmp_path / "out.tsv")
    write_tsv(path, examples)
    assert [(e.news, e.summary) for e in read_examples(path)] == [
        (e.news, e.summary) for e in examples
    ]
