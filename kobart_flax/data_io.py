"""Reading (and writing) news/summary examples, with every bad row reported by file and line.

Two formats, chosen by suffix:

- ``.tsv``: a header row naming the columns ``news`` and ``summary`` (either order), then one
  example per record. This is the format of the original project's ``data/train.tsv``. Quoting
  is strict: a field is quoted only if it is entirely quoted (see ``_split_records``).
- ``.jsonl``: one JSON object per line with string fields ``news`` and ``summary``; other fields
  are ignored.

The demo's file tab also reads comma-separated files by the TSV rules (``read_articles``).

Paths go through ``etils.epath`` so ``gs://`` buckets work the same as local files.
"""

import bisect
import csv
import io
import itertools
import json
import logging
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

from etils import epath

logger = logging.getLogger(__name__)

BAD_ROW_POLICIES = ("error", "skip")
COLUMNS = ("news", "summary")

# The characters surrogateescape decoding substitutes for invalid UTF-8 bytes 0x80-0xff.
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")

# Lone surrogates cannot be encoded as UTF-8, so no tokenizer accepts text containing them.
_ANY_SURROGATE = re.compile("[\ud800-\udfff]")

# Decoded text other than ASCII and escaped bytes. A line mostly of these is UTF-8 with a few
# bad bytes (corruption), not text in another encoding, whose bytes only now and then happen to
# form a valid UTF-8 sequence.
_VALID_NON_ASCII = re.compile("[^\x00-\x7f\udc80-\udcff]")

# An entirely quoted field, as csv and pandas write one holding the delimiter, a quote or a line
# break: '"', text with every inner quote doubled, '"'. The possessive quantifiers never
# backtrack, so a quote that never closes costs one pass over the rest of the file, not more.
_QUOTED_FIELD = re.compile(r'"((?:[^"]++|"")*+)"')
_LINE_BREAK = re.compile("[\r\n]")

# Letters that render as nothing: the Hangul fillers, which Korean text uses as a "blank".
# (Zero-width spaces, joiners and byte order marks are Unicode category Cf, checked as such.)
_INVISIBLE_LETTERS = frozenset("\u115f\u1160\u3164\uffa0")

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
    formats = ".tsv, .jsonl" if require_summary else ".tsv, .jsonl, .txt"
    formats += ", .parquet, .arrow, .csv, a save_to_disk directory or hf://datasets/..."
    if file.is_dir():
        raise DataError(
            f"{path}: a directory, and not a datasets save_to_disk one; expected a file ({formats})"
        )
    if suffix == ".tsv":
        rows = _parse_delimited(path, _read_bytes(path, formats), require_summary, "\t")
    elif suffix == ".jsonl":
        rows = _parse_jsonl(path, _read_bytes(path, formats), require_summary)
    elif suffix == ".txt" and not require_summary:
        rows = _parse_txt(path, _read_bytes(path, formats))
    else:
        raise DataError(f"{path}: unsupported suffix {file.suffix!r}; use {formats}")
    return apply_bad_row_policy(path, rows, bad_rows)


def read_articles(path: str) -> list[Example]:
    """Articles to summarize (summaries optional): what ``read_examples`` reads with
    ``require_summary=False``, except that ``.csv`` is read by the TSV rules.

    ``read_examples`` hands ``.csv`` to the ``datasets`` library (any column names, no line
    numbers); the demo's file tab wants what spreadsheets export read like a TSV instead: a
    header naming ``news`` (and optionally ``summary``), strict quoting, errors by line.
    """
    if epath.Path(path).suffix.lower() != ".csv":
        return read_examples(path, require_summary=False)
    data = _read_bytes(path, "a .csv file with a header row naming 'news'")
    return apply_bad_row_policy(path, _parse_delimited(path, data, False, ","), "error")


def _read_bytes(path: str, expected: str) -> bytes:
    try:
        return epath.Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file; expected {expected}") from None
    except IsADirectoryError:
        raise DataError(f"{path}: a directory; expected {expected}") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read it ({error.strerror or error})") from None


def write_tsv(path: str, examples: Iterable[Example]) -> None:
    """Writes examples in the TSV convention ``read_examples`` reads (and pandas writes).

    Fields containing a tab, newline or double quote are double-quoted with inner quotes
    doubled, exactly like ``DataFrame.to_csv(sep='\\t', index=False)``, so files written here
    also load in the original project. The caller writes to a temporary name and renames if a
    failure must not leave a half-written file (``scripts/convert_dataset.py`` does).
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    # csv (like pandas) leaves a field holding a lone "\r" unquoted, yet every reader, this one
    # included, ends a line there; rows with one are written with every field quoted instead.
    quoting_all = csv.writer(buffer, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_ALL)
    writer.writerow(COLUMNS)
    for example in examples:
        row = (example.news, example.summary)
        (quoting_all if any("\r" in field for field in row) else writer).writerow(row)
    epath.Path(path).write_text(buffer.getvalue(), encoding="utf-8")


def invalid_utf8_error(path: str, origin: str, raw: bytes, detail: str = "") -> DataError:
    """The error for a line of ``path`` that is not UTF-8, with a hint if it is CP949 instead.

    Korean files from older Windows software (Excel's "CSV" among them) are CP949 / EUC-KR:
    such a line decodes as CP949, and most of its non-ASCII bytes are invalid UTF-8.
    """
    message = f"{origin}: invalid UTF-8{detail}"
    try:
        raw.decode("cp949")
    except UnicodeDecodeError:
        return DataError(message)
    text = raw.decode("utf-8", errors="surrogateescape")
    if len(_VALID_NON_ASCII.findall(text)) >= len(_ESCAPED_BYTE.findall(text)):
        return DataError(message)
    file = epath.Path(path)
    return DataError(
        f"{message}; the file looks CP949/EUC-KR-encoded: convert it to UTF-8, "
        f"e.g. iconv -f cp949 -t utf-8 {file.name} > {file.stem}.utf8{file.suffix}"
    )


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

    A field of only invisible characters (zero-width spaces, Hangul fillers) counts as empty:
    ``str.strip`` keeps them, and the tokenizer would turn them into ``<unk>`` rows.
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
        if _is_blank(value):
            shown = f" (only {', '.join(sorted({f'U+{ord(c):04X}' for c in value}))})"
            return DataError(f"{origin}: empty {name!r}{shown if value else ''}")
        if _ANY_SURROGATE.search(value):
            # Only a JSON "\udXXX" escape can get here; the Rust tokenizer would reject it later,
            # far from the row that caused it.
            return DataError(f"{origin}: {name!r} holds an unpaired surrogate, not valid Unicode")
    return Example(news=news, summary=summary, origin=origin)


def _is_blank(text: str) -> bool:
    # all() stops at the first visible character, the first one of any real text.
    return all(
        char.isspace() or char in _INVISIBLE_LETTERS or unicodedata.category(char) == "Cf"
        for char in text
    )


def _parse_delimited(
    path: str, data: bytes, require_summary: bool, delimiter: str
) -> Iterator[Example | DataError]:
    # Decoding with surrogateescape keeps going past invalid UTF-8: each bad byte becomes a lone
    # surrogate that no valid text contains, so the row holding it can be reported (or skipped)
    # by line while the rest of the file still parses.
    text = data.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    # Lines as csv counts them: "\n", "\r\n" and a lone "\r" each end one.
    lines = io.StringIO(text, newline="").readlines()
    records = _split_records(path, text, lines, delimiter)
    header = _read_header(path, records, require_summary, delimiter)
    order = [header.index(column) for column in COLUMNS if column in header]
    for record in records:
        if isinstance(record, DataError):
            yield record
        else:
            yield _delimited_row(path, record, order, lines, delimiter)


class _Record(NamedTuple):
    fields: list[str]
    first_line: int
    last_line: int


def _split_records(
    path: str, text: str, lines: list[str], delimiter: str
) -> Iterator[_Record | DataError]:
    """The records of delimited text (blank lines skipped), or an error for each bad one.

    Quoting is what pandas ``to_csv`` and ``write_tsv`` write, read strictly: a field is quoted
    only if it is entirely quoted, '"' to '"' with inner quotes doubled, and then may hold the
    delimiter and line breaks. The csv module instead opens a quote at any field starting with
    '"' and runs it on to the next lone '"', however many lines later, so one stray quote
    silently merged rows. Here a field that only starts with a quote (``"경제가 어렵다" 라고``)
    is taken literally, and one whose quote does not close on its own line and does not end a
    quoted field later either is an error at its line; reading resumes on the next line.
    """
    line_starts = list(itertools.accumulate(map(len, lines[:-1]), initial=0))
    unquoted = re.compile(f"[^{re.escape(delimiter)}\r\n]*")
    position = 0
    while position < len(text):
        if text[position] in "\r\n":
            position = _after_line_end(text, position)
            continue  # A blank line is not a record; pandas skips these too.
        first_line = bisect.bisect_right(line_starts, position)
        fields: list[str] = []
        while True:
            field = _field(text, position, delimiter, unquoted)
            if field is None:
                yield DataError(
                    f"{path}:{first_line}: column {len(fields) + 1} opens a '\"' that never "
                    'closes; quote the whole field ("..." with inner quotes doubled) or '
                    "remove the stray quote"
                )
                # Line numbers count from 1, so line_starts[first_line] starts the next line.
                position = line_starts[first_line] if first_line < len(lines) else len(text)
                break
            value, position = field
            fields.append(value)
            if not text.startswith(delimiter, position):
                last_line = bisect.bisect_right(line_starts, position)
                yield _Record(fields, first_line, last_line)
                position = _after_line_end(text, position)
                break
            position += len(delimiter)


def _field(
    text: str, position: int, delimiter: str, unquoted: re.Pattern
) -> tuple[str, int] | None:
    """(the field starting at ``position``, where it ends), or None for an unclosed quote."""
    if text.startswith('"', position):
        quoted = _QUOTED_FIELD.match(text, position)
        if quoted and _ends_field(text, quoted.end(), delimiter):
            return quoted[1].replace('""', '"'), quoted.end()
        if not quoted or _LINE_BREAK.search(text, position, quoted.end()):
            return None
        # The quote closes on its line but text follows it: quotes within the text.
    end = unquoted.match(text, position).end()
    return text[position:end], end


def _ends_field(text: str, position: int, delimiter: str) -> bool:
    return position == len(text) or text[position] in "\r\n" or text.startswith(delimiter, position)


def _after_line_end(text: str, position: int) -> int:
    return position + 2 if text.startswith("\r\n", position) else position + 1


def _read_header(
    path: str, records: Iterator[_Record | DataError], require_summary: bool, delimiter: str
) -> list[str]:
    record = next(records, None)
    if record is None:
        separator = "<TAB>" if delimiter == "\t" else delimiter
        raise DataError(f"{path}:1: empty file; expected a header row 'news{separator}summary'")
    if isinstance(record, DataError):
        raise record  # Without its header no row of the file can be read.
    header = [name.strip() for name in record.fields]
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


def _delimited_row(
    path: str, record: _Record, order: list[int], lines: list[str], delimiter: str
) -> Example | DataError:
    fields, first_line, last_line = record
    origin = f"{path}:{first_line}"
    for number in range(first_line, last_line + 1):
        line = lines[number - 1]
        if _ESCAPED_BYTE.search(line):
            raw = line.encode("utf-8", errors="surrogateescape")
            return invalid_utf8_error(path, f"{path}:{number}", raw)
    if len(fields) != len(order):
        message = _column_count_message(len(fields), len(order), record, delimiter)
        return DataError(f"{origin}: {message}")
    if len(order) == 1:
        return _make_example(fields[0], None, origin)
    news, summary = (fields[index] for index in order)
    return _make_example(news, summary, origin)


def _column_count_message(count: int, expected: int, record: _Record, delimiter: str) -> str:
    first_line, last_line = record.first_line, record.last_line
    names = "news, summary" if expected == 2 else "news"
    message = f"expected {expected} column{'s' if expected > 1 else ''} ({names}), got {count}"
    if last_line > first_line:
        # Only a quoted field lets a row run over several lines.
        return f"{message}; the row spans lines {first_line}-{last_line}, an unbalanced '\"'?"
    if count > expected:
        separator = "tab" if delimiter == "\t" else f"{delimiter!r}"
        return f"{message}; an unescaped {separator} inside a field?"
    return f"{message}; an unescaped newline inside a field?"


def _parse_jsonl(path: str, data: bytes, require_summary: bool) -> Iterator[Example | DataError]:
    # Split on b"\n" only: JSON strings may legally hold U+2028 and friends, which
    # str.splitlines would treat as line breaks.
    for number, raw_line in enumerate(data.split(b"\n"), start=1):
        origin = f"{path}:{number}"
        try:
            line = raw_line.decode("utf-8").removeprefix("\ufeff").strip()
        except UnicodeDecodeError as error:
            detail = f" at byte {error.start} of the line"
            yield invalid_utf8_error(path, origin, raw_line, detail)
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
            detail = f" at byte {error.start} of the line"
            yield invalid_utf8_error(path, origin, raw_line, detail)
            continue
        yield _make_example(line, None, origin)
