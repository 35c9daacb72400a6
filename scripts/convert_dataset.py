"""Converts public Korean summarization datasets to the project's news/summary TSV files.

Formats:

- ``dacon``: JSONL, one article per line, ``{"article_original": [sentences...],
  "abstractive": "summary", ...}`` (the Dacon competition's train file).
- ``aihub``: AI Hub 문서요약 JSON, ``{"documents": [{"text": [[{"sentence": ...}, ...], ...],
  "abstractive": ["summary"], ...}, ...]}``, where ``text`` is a list of paragraphs.

The articles are split into train and test with a seeded shuffle and written as
``OUTPUT_DIR/train.tsv`` and ``OUTPUT_DIR/test.tsv`` in the convention ``read_examples`` reads.
Existing files there are replaced only with ``--overwrite``, and only once both new files are
written whole.

Usage, from the repository root:

    python -m scripts.convert_dataset --format dacon train.jsonl --output-dir data
"""

import argparse
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from etils import epath

from kobart_flax.data_io import DataError, Example, invalid_utf8_error, write_tsv


@dataclass(frozen=True)
class Conversion:
    examples: list[Example]
    skipped: list[DataError]


def clean_text(text: str) -> str:
    """Collapses every whitespace run (tabs and newlines included) to one space and strips.

    Tabs and line breaks inside a field would otherwise break the one-row-per-line TSV layout
    for any reader that does not understand quoting.
    """
    return " ".join(text.split())


def read_dacon(path: str) -> Iterator[Example | DataError]:
    """Yields one example (or the reason it is unusable) per line of a Dacon JSONL file."""
    for number, line in enumerate(epath.Path(path).read_bytes().split(b"\n"), start=1):
        if not line.strip():
            continue
        origin = f"{path}:{number}"
        try:
            record = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            yield invalid_utf8_error(path, origin, line)
            continue
        except json.JSONDecodeError as error:
            yield DataError(f"{origin}: invalid JSON ({error.msg})")
            continue
        yield _dacon_example(record, origin)


def _dacon_example(record: object, origin: str) -> Example | DataError:
    if not isinstance(record, dict):
        return DataError(f"{origin}: expected a JSON object")
    sentences, summary = record.get("article_original"), record.get("abstractive")
    if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
        return DataError(f"{origin}: 'article_original' must be a list of strings")
    if not isinstance(summary, str):
        return DataError(f"{origin}: 'abstractive' must be a string")
    return _example(" ".join(sentences), summary, origin)


def read_aihub(path: str) -> Iterator[Example | DataError]:
    """Yields one example (or the reason it is unusable) per document of an AI Hub JSON file."""
    try:
        documents = json.loads(epath.Path(path).read_bytes().decode("utf-8"))["documents"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        # Without the document list nothing in the file is usable, so this is never skipped.
        raise DataError(f"{path}:1: not an AI Hub JSON file with 'documents' ({error})") from error
    if not isinstance(documents, list):
        raise DataError(f"{path}:1: 'documents' must be a list")
    for index, document in enumerate(documents):
        document_id = document.get("id") if isinstance(document, dict) else None
        yield _aihub_example(document, f"{path}:documents[{index}] (id {document_id})")


def _aihub_example(document: object, origin: str) -> Example | DataError:
    if not isinstance(document, dict):
        return DataError(f"{origin}: expected a JSON object")
    paragraphs, summaries = document.get("text"), document.get("abstractive")
    try:
        sentences = [entry["sentence"] for paragraph in paragraphs for entry in paragraph]
    except (KeyError, TypeError):
        return DataError(f"{origin}: 'text' must be a list of paragraphs of {{'sentence': ...}}")
    if not all(isinstance(sentence, str) for sentence in sentences):
        return DataError(f"{origin}: every 'sentence' must be a string")
    if not isinstance(summaries, list) or not summaries or not isinstance(summaries[0], str):
        return DataError(f"{origin}: 'abstractive' must be a non-empty list of strings")
    return _example(" ".join(sentences), summaries[0], origin)


def _example(news: str, summary: str, origin: str) -> Example | DataError:
    news, summary = clean_text(news), clean_text(summary)
    for name, value in (("news", news), ("summary", summary)):
        if not value:
            return DataError(f"{origin}: empty {name!r}")
    return Example(news=news, summary=summary, origin=origin)


READERS = {"dacon": read_dacon, "aihub": read_aihub}

# Skipped records named on stderr; the rest are only counted, as real dumps can have thousands.
_SKIPPED_SHOWN = 5


def convert(input_format: str, paths: list[str], strict: bool) -> Conversion:
    """Reads all inputs; bad records stop the run if ``strict``, else they are set aside."""
    examples: list[Example] = []
    skipped: list[DataError] = []
    for path in paths:
        for record in READERS[input_format](path):
            if isinstance(record, Example):
                examples.append(record)
            elif strict:
                raise record
            else:
                skipped.append(record)
    return Conversion(examples=examples, skipped=skipped)


def split_train_test(
    examples: list[Example], test_fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """A seeded random split; each side keeps the input order, so diffs of reruns stay small."""
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    test_count = round(len(examples) * test_fraction)
    is_test = np.zeros(len(examples), dtype=bool)
    is_test[np.random.default_rng(seed).permutation(len(examples))[:test_count]] = True
    train = [example for example, test in zip(examples, is_test, strict=True) if not test]
    test = [example for example, test in zip(examples, is_test, strict=True) if test]
    return train, test


def write_outputs(output_dir: str, splits: dict[str, list[Example]]) -> None:
    """Writes ``OUTPUT_DIR/<split>.tsv`` for each split: all aside first, then renamed into place.

    A failure while writing (a full disk, an interrupt) so leaves any earlier files whole, and
    never a half-written file or a new train.tsv beside an old test.tsv.
    """
    directory = epath.Path(output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    partial = {name: directory / f".{name}.tsv.partial-{os.getpid()}" for name in splits}
    try:
        for name, examples in splits.items():
            write_tsv(str(partial[name]), examples)
        for name, path in partial.items():
            path.replace(directory / f"{name}.tsv")
    finally:
        for path in partial.values():
            path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--format", choices=sorted(READERS), required=True)
    parser.add_argument("inputs", nargs="+", help="input files (JSONL for dacon, JSON for aihub)")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--strict", action="store_true", help="stop at the first bad record")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace train.tsv / test.tsv in --output-dir"
    )
    args = parser.parse_args(argv)
    output_dir = epath.Path(args.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        parser.exit(2, f"error: --output-dir {args.output_dir} is a file, not a directory\n")
    existing = [output_dir / name for name in ("train.tsv", "test.tsv")]
    existing = [path for path in existing if path.exists()]
    if existing and not args.overwrite:
        # Checked before converting: a long conversion must not end in this refusal.
        parser.exit(2, f"error: {existing[0]} exists; pass --overwrite to replace it\n")

    try:
        conversion = convert(args.format, args.inputs, args.strict)
    except DataError as error:
        raise SystemExit(f"error: {error}") from None  # The message names the record; no trace.
    for error in conversion.skipped[:_SKIPPED_SHOWN]:
        print(f"skipped {error}", file=sys.stderr)
    train, test = split_train_test(conversion.examples, args.test_fraction, args.seed)
    write_outputs(args.output_dir, {"train": train, "test": test})
    read_count = len(conversion.examples) + len(conversion.skipped)
    print(
        f"read {read_count}, skipped {len(conversion.skipped)}, "
        f"train {len(train)}, test {len(test)} -> {args.output_dir}"
    )


if __name__ == "__main__":
    main()
