"""The Dacon / AI Hub converter, on tiny files written here."""

import json

import pytest

from kobart_flax.data_io import DataError, Example, read_examples
from scripts.convert_dataset import clean_text, convert, main, split_train_test


def dacon_record(index: int, **overrides) -> dict:
    record = {
        "id": str(index),
        "article_original": [f"{index}번 기사의 첫 문장이다.", "둘째\t문장은\n줄이 바뀐다."],
        "abstractive": f"{index}번 요약",
        "extractive": [0, 1, None],
    }
    return {**record, **overrides}


def write_dacon(tmp_path, records, name="train.jsonl") -> str:
    path = tmp_path / name
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def aihub_document(index: int, **overrides) -> dict:
    document = {
        "id": f"doc{index}",
        "text": [
            [{"index": 0, "sentence": f"{index}번 문서 첫 문단.", "highlight_indices": ""}],
            [
                {"index": 1, "sentence": "둘째 문단 첫 문장.", "highlight_indices": ""},
                {"index": 2, "sentence": '"인용"으로 끝난다.', "highlight_indices": ""},
            ],
        ],
        "abstractive": [f"{index}번 문서 요약"],
        "extractive": [0, 2, None],
    }
    return {**document, **overrides}


def write_aihub(tmp_path, documents, name="aihub.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps({"name": "문서요약", "documents": documents}, ensure_ascii=False))
    return str(path)


def test_clean_text_turns_tabs_and_newlines_into_single_spaces():
    assert clean_text(" 가\t나\r\n다  라\u2028마 ") == "가 나 다 라 마"


def test_dacon_sentences_are_joined_and_cleaned(tmp_path):
    path = write_dacon(tmp_path, [dacon_record(1)])
    conversion = convert("dacon", [path], strict=False)
    assert conversion.examples == [
        Example("1번 기사의 첫 문장이다. 둘째 문장은 줄이 바뀐다.", "1번 요약", f"{path}:1")
    ]
    assert conversion.skipped == []


def test_aihub_paragraph_sentences_are_joined_in_order(tmp_path):
    path = write_aihub(tmp_path, [aihub_document(1), aihub_document(2)])
    conversion = convert("aihub", [path], strict=False)
    assert [(e.news, e.summary) for e in conversion.examples] == [
        ('1번 문서 첫 문단. 둘째 문단 첫 문장. "인용"으로 끝난다.', "1번 문서 요약"),
        ('2번 문서 첫 문단. 둘째 문단 첫 문장. "인용"으로 끝난다.', "2번 문서 요약"),
    ]
    assert conversion.examples[1].origin == f"{path}:documents[1] (id doc2)"


def test_bad_dacon_records_are_skipped_with_their_lines(tmp_path):
    records = [
        dacon_record(1),
        "{not json",
        dacon_record(3, abstractive=None),
        dacon_record(4, article_original="문자열 하나"),
        dacon_record(5, article_original=[" ", "\t"]),
        dacon_record(6),
    ]
    path = write_dacon(tmp_path, records)
    conversion = convert("dacon", [path], strict=False)
    assert [e.summary for e in conversion.examples] == ["1번 요약", "6번 요약"]
    messages = [str(error) for error in conversion.skipped]
    assert [m.split(": ")[0] for m in messages] == [f"{path}:{n}" for n in (2, 3, 4, 5)]
    assert "invalid JSON" in messages[0]
    assert "'abstractive' must be a string" in messages[1]
    assert "'article_original' must be a list of strings" in messages[2]
    assert "empty 'news'" in messages[3]


def test_strict_stops_at_the_first_bad_record(tmp_path):
    path = write_dacon(tmp_path, [dacon_record(1), dacon_record(2, abstractive=3)])
    with pytest.raises(DataError, match=f"^{path}:2: 'abstractive'"):
        convert("dacon", [path], strict=True)


def test_main_with_strict_exits_naming_the_record(tmp_path):
    path = write_dacon(tmp_path, [dacon_record(1), "{broken"])
    with pytest.raises(SystemExit, match=f"^error: {path}:2: invalid JSON"):
        main(["--format", "dacon", path, "--output-dir", str(tmp_path / "out"), "--strict"])
    assert not (tmp_path / "out").exists()


def test_bad_aihub_documents_are_skipped_with_their_index(tmp_path):
    documents = [
        aihub_document(0),
        aihub_document(1, abstractive=[]),
        aihub_document(2, text=[[{"index": 0}]]),
        aihub_document(3),
    ]
    path = write_aihub(tmp_path, documents)
    conversion = convert("aihub", [path], strict=False)
    assert [e.summary for e in conversion.examples] == ["0번 문서 요약", "3번 문서 요약"]
    assert [str(e).split(": ")[0] for e in conversion.skipped] == [
        f"{path}:documents[1] (id doc1)",
        f"{path}:documents[2] (id doc2)",
    ]


def test_a_file_that_is_not_aihub_json_is_an_error(tmp_path):
    path = tmp_path / "wrong.json"
    path.write_text('{"data": []}')
    with pytest.raises(DataError, match="not an AI Hub JSON file"):
        convert("aihub", [str(path)], strict=False)


def test_split_is_seeded_disjoint_and_complete():
    examples = [Example(f"기사 {i}", f"요약 {i}", f"x:{i}") for i in range(50)]
    train, test = split_train_test(examples, 0.2, seed=42)
    assert len(test) == 10 and len(train) == 40
    assert sorted(train + test, key=examples.index) == examples
    assert split_train_test(examples, 0.2, seed=42) == (train, test)
    assert split_train_test(examples, 0.2, seed=43)[1] != test


def test_main_writes_tsv_that_reads_back_equal(tmp_path, capsys):
    records = [dacon_record(i) for i in range(10)]
    records[4]["abstractive"] = '"따옴표"로 시작하는 요약'
    records.insert(3, "{broken")
    path = write_dacon(tmp_path, records)
    output_dir = tmp_path / "out"
    main(["--format", "dacon", path, "--output-dir", str(output_dir), "--test-fraction", "0.3"])

    train = read_examples(str(output_dir / "train.tsv"))
    test = read_examples(str(output_dir / "test.tsv"))
    expected = convert("dacon", [path], strict=False).examples
    assert len(train) == 7 and len(test) == 3
    round_trip = sorted((e.news, e.summary) for e in train + test)
    assert round_trip == sorted((e.news, e.summary) for e in expected)
    captured = capsys.readouterr()
    assert "read 11, skipped 1, train 7, test 3" in captured.out
    assert f"{path}:4" in captured.err


def previous_output(tmp_path) -> tuple[list[str], object]:
    """An output directory holding an earlier conversion of 20 records."""
    output_dir = tmp_path / "out"
    path = write_dacon(tmp_path, [dacon_record(i) for i in range(20)], name="old.jsonl")
    main(["--format", "dacon", path, "--output-dir", str(output_dir)])
    return [write_dacon(tmp_path, [dacon_record(i) for i in range(100, 110)])], output_dir


def snapshot(directory) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def test_main_refuses_to_replace_earlier_output_without_overwrite(tmp_path, capsys):
    inputs, output_dir = previous_output(tmp_path)
    before = snapshot(output_dir)
    capsys.readouterr()
    with pytest.raises(SystemExit) as raised:
        main(["--format", "dacon", *inputs, "--output-dir", str(output_dir)])
    assert raised.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert f"{output_dir / 'train.tsv'} exists" in error and "--overwrite" in error
    assert snapshot(output_dir) == before


def test_overwrite_replaces_the_earlier_output(tmp_path):
    inputs, output_dir = previous_output(tmp_path)
    main(["--format", "dacon", *inputs, "--output-dir", str(output_dir), "--overwrite"])
    assert sorted(path.name for path in output_dir.iterdir()) == ["test.tsv", "train.tsv"]
    examples = read_examples(str(output_dir / "train.tsv")) + read_examples(
        str(output_dir / "test.tsv")
    )
    assert sorted(e.summary for e in examples) == [f"{i}번 요약" for i in range(100, 110)]


def test_a_failed_write_leaves_the_earlier_output_whole(tmp_path, monkeypatch):
    inputs, output_dir = previous_output(tmp_path)
    before = snapshot(output_dir)

    def write_half_then_fail(path, examples):
        with open(path, "w", encoding="utf-8") as file:
            file.write("news\tsummary\n반쯤")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("scripts.convert_dataset.write_tsv", write_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        main(["--format", "dacon", *inputs, "--output-dir", str(output_dir), "--overwrite"])
    assert snapshot(output_dir) == before
