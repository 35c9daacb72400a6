"""Reading (and writing) news/summary examples, with every bad row reported by file and line.

Two formats, chosen by suffix:

- ``.tsv``: a header row naming the columns ``news`` and ``summary`` (either order), then one
  example per record. This is the format of the original project's ``data/train.tsv``.
- ``.jsonl``: one JSON object per line with string fields ``news`` and ``summary``; other fields
  are ignored.

Paths go through ``etils.epath`` so ``gs://`` buckets work the same as local files.
"""

import csv
import io
import json
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from etils import epath

logger = logging.getLogger(__name__)

BAD_ROW_POLICIES = ("error", "skip")
COLUMNS = ("news", "summary")

# The characters surrogateescape decoding substitutes for invalid UTF-8 bytes 0x80-0xff.
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")

# Lone surrogates cannot be encoded as UTF-8, so no tokenizer accepts text containing them.
_ANY_SURROGATE = re.compile("[\ud800-\udfff]")

# How many bad-row messages the single "skip" warning quotes before it only counts.
_WARNING_EXAMPLE_COUNT = 3


class DataError(ValueError):
    """Bad input data; the message starts with ``path:line`` of the offending row."""


@dataclass(frozen=True)
class Example:
    news: str
    summary: str
    origin: str  # "path:line", carried along so later stages can name the row in errors


def read_examples(
    path: str,
    bad_rows: str = "error",
    require_summary: bool = True,
    text_column: str = COLUMNS[0],
    summary_column: str = COLUMNS[1],
) -> list[Example]:
    """Reads every example of a ``.tsv`` or ``.jsonl`` file (or ``.txt``, articles only), or of
    a ``datasets`` source (see :mod:`kobart_flax.dataset_sources`).

    Args:
      path: local path or ``gs://`` URL; a ``.parquet`` / ``.arrow`` / ``.csv`` file, a
        ``save_to_disk`` directory or ``hf://datasets/OWNER/NAME[:CONFIG][@SPLIT]``.
      text_column, summary_column: the columns of a ``datasets`` source; TSV and JSONL files
        always name theirs ``news`` and ``summary`` (``scripts/convert_dataset.py`` renames).
      bad_rows: ``"error"`` raises ``DataError`` at the first bad row; ``"skip"`` drops bad rows
        and logs one warning with their count and the first few messages.
      require_summary: False for inputs to summarize: the ``summary`` column/field may then be
        absent (``Example.summary`` is ``""``), and ``.txt`` files hold one article per line.

    A file without any good example is an error under both policies: training on nothing is
    never what the caller meant.
    """
    if bad_rows not in BAD_ROW_POLICIES:
        raise ValueError(f"bad_rows must be one of {BAD_ROW_POLICIES}, got {bad_rows!r}")
    # Imported here: dataset_sources builds on this module's Example and bad-row policy.
    from kobart_flax import dataset_sources

    if dataset_sources.is_dataset_source(path):
        return dataset_sources.read_dataset_examples(
            path, text_column, summary_column, bad_rows, require_summary
        )
    file = epath.Path(path)
    suffix = file.suffix.lower()
    if suffix == ".tsv":
        rows = _parse_tsv(path, file.read_bytes(), require_summary)
    elif suffix == ".jsonl":
        rows = _parse_jsonl(path, file.read_bytes(), require_summary)
    elif suffix == ".txt" and not require_summary:
        rows = _parse_txt(path, file.read_bytes())
    else:
        formats = ".tsv, .jsonl" if require_summary else ".tsv, .jsonl, .txt"
        formats += ", .parquet, .arrow, .csv, a save_to_disk directory or hf://datasets/..."
        raise ValueError(f"{path}: unsupported suffix {file.suffix!r}; use {formats}")
    return apply_bad_row_policy(path, rows, bad_rows)


def write_tsv(path: str, examples: Iterable[Example]) -> None:
    """Writes examples in the TSV convention ``read_examples`` reads (and pandas writes).

    Fields containing a tab, newline or double quote are double-quoted with inner quotes
    doubled, exactly like ``DataFrame.to_csv(sep='\\t', index=False)``, so files written here
    also load in the original project.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(COLUMNS)
    for example in examples:
        writer.writerow((example.news, example.summary))
    epath.Path(path).write_text(buffer.getvalue(), encoding="utf-8")


def apply_bad_row_policy(
    path: str, rows: Iterable[Example | DataError], bad_rows: str
) -> list[Example]:
    examples: list[Example] = []
    errors: list[DataError] = []
    for row in rows:
        if isinstance(row, Example):
            examples.append(row)
        elif bad_rows == "error":
            raise row
        else:
            errors.append(row)
    if errors:
        quoted = "; ".join(str(error) for error in errors[:_WARNING_EXAMPLE_COUNT])
        more = len(errors) - _WARNING_EXAMPLE_COUNT
        logger.warning(
            "%s: skipped %d bad row(s): %s%s",
            path,
            len(errors),
            quoted,
            f"; and {more} more" if more > 0 else "",
        )
    if not examples:
        skipped = f" ({len(errors)} bad row(s) skipped)" if errors else ""
        raise DataError(f"{path}:1: no examples{skipped}")
    return examples


def _make_example(news: str, summary: str | None, origin: str) -> Example | DataError:
    """Strips both fields and refuses empty ones, so no row silently becomes an empty example.

    ``summary=None`` means the input has no summaries at all (articles to summarize).
    """
    news = news.strip()
    if summary is None:
        fields = (("news", news),)
        summary = ""
    else:
        summary = summary.strip()
        fields = (("news", news), ("summary", summary))
    for name, value in fields:
        if not value:
            return DataError(f"{origin}: empty {name!r}")
        if _ANY_SURROGATE.search(value):
            # Only a JSON "\udXXX" escape can get here; the Rust tokenizer would reject it later,
            # far from the row that caused it.
            return DataError(f"{origin}: {name!r} holds an unpaired surrogate, not valid Unicode")
    return Example(news=news, summary=summary, origin=origin)


def _parse_tsv(path: str, data: bytes, require_summary: bool) -> Iterator[Example | DataError]:
    # Decoding with surrogateescape keeps going past invalid UTF-8: each bad byte becomes a lone
    # surrogate that no valid text contains, so the row holding it can be reported (or skipped)
    # by line while the rest of the file still parses.
    text = data.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    # The csv module, not str.split, because the original project read these files with
    # pandas.read_csv(sep='\t') and wrote them with to_csv: fields holding a tab, newline or
    # double quote arrive double-quoted (inner quotes doubled) and must be unquoted the same way.
    # newline="" hands line ends to csv untouched, as its docs require for quoted newlines.
    lines = io.StringIO(text, newline="").readlines()
    reader = csv.reader(lines, delimiter="\t")
    header = _read_tsv_header(path, reader, require_summary)
    order = [header.index(column) for column in COLUMNS if column in header]
    while True:
        first_line = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            # The reader cannot resynchronise after this, so it stops the file under any policy.
            raise DataError(f"{path}:{first_line}: malformed TSV ({error})") from error
        if not fields:
            continue  # A blank line is not a row; pandas skips these too.
        yield _tsv_row(path, fields, order, lines, first_line, reader.line_num)


def _read_tsv_header(path: str, reader: Iterator[list[str]], require_summary: bool) -> list[str]:
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        raise DataError(f"{path}:1: empty file; expected a header row 'news<TAB>summary'") from None
    if sorted(header) == sorted(COLUMNS) or (not require_summary and header == ["news"]):
        return header
    hint = ""
    if set(COLUMNS) <= set(header):
        hint = "; extra header columns are not allowed"
        if header[0] in ("", "Unnamed: 0"):
            hint += " (an index column? write with pandas to_csv(..., index=False))"
    raise DataError(
        f"{path}:1: expected a header row with exactly the columns 'news' and 'summary', "
        f"got {header!r}{hint}"
    )


def _tsv_row(
    path: str,
    fields: list[str],
    order: list[int],
    lines: list[str],
    first_line: int,
    last_line: int,
) -> Example | DataError:
    origin = f"{path}:{first_line}"
    for number in range(first_line, last_line + 1):
        if _ESCAPED_BYTE.search(lines[number - 1]):
            return DataError(f"{path}:{number}: invalid UTF-8")
    if len(fields) != len(order):
        message = _column_count_message(len(fields), len(order), first_line, last_line)
        return DataError(f"{origin}: {message}")
    if len(order) == 1:
        return _make_example(fields[0], None, origin)
    news, summary = (fields[index] for index in order)
    return _make_example(news, summary, origin)


def _column_count_message(count: int, expected: int, first_line: int, last_line: int) -> str:
    names = "news, summary" if expected == 2 else "news"
    message = f"expected {expected} column{'s' if expected > 1 else ''} ({names}), got {count}"
    if last_line > first_line:
        # Only an opened double quote lets a row run over several lines.
        return f"{message}; the row spans lines {first_line}-{last_line}, an unbalanced '\"'?"
    if count > expected:
        return f"{message}; an unescaped tab inside a field?"
    return f"{message}; an unescaped newline inside a field?"


def _parse_jsonl(path: str, data: bytes, require_summary: bool) -> Iterator[Example | DataError]:
    # Split on b"\n" only: JSON strings may legally hold U+2028 and friends, which
    # str.splitlines would treat as line breaks.
    for number, raw_line in enumerate(data.split(b"\n"), start=1):
        origin = f"{path}:{number}"
        try:
            line = raw_line.decode("utf-8").removeprefix("\ufeff").strip()
        except UnicodeDecodeError as error:
            yield DataError(f"{origin}: invalid UTF-8 at byte {error.start} of the line")
            continue
        if not line:
            continue  # Blank lines (including the one after the final newline) hold no record.
        yield _jsonl_row(line, origin, require_summary)


def _jsonl_row(line: str, origin: str, require_summary: bool) -> Example | DataError:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        return DataError(f"{origin}: invalid JSON ({error.msg} at column {error.colno})")
    if not isinstance(record, dict):
        return DataError(f"{origin}: expected a JSON object, got {type(record).__name__}")
    required = COLUMNS if require_summary or "summary" in record else ("news",)
    for name in required:
        if name not in record:
            return DataError(f"{origin}: missing field {name!r}")
        if not isinstance(record[name], str):
            kind = type(record[name]).__name__
            return DataError(f"{origin}: field {name!r} must be a string, got {kind}")
    return _make_example(record["news"], record.get("summary"), origin)


def _parse_txt(path: str, data: bytes) -> Iterator[Example | DataError]:
    """One article per line; a blank line inside the file is reported, not skipped."""
    lines = data.split(b"\n")
    if lines and not lines[-1].strip():
        lines = lines[:-1]  # the newline that ends the last line opens no article
    for number, raw_line in enumerate(lines, start=1):
        origin = f"{path}:{number}"
        try:
            line = raw_line.decode("utf-8").removeprefix("\ufeff")
        except UnicodeDecodeError as error:
            yield DataError(f"{origin}: invalid UTF-8 at byte {error.start} of the line")
            continue
        yield _make_example(line, None, origin)
