"""Examples from Hugging Face ``datasets`` sources, with the TSV reader's bad-row guarantees.

Three kinds of source, told apart by the string itself:

- a file ending in ``.parquet``, ``.arrow`` or ``.csv`` (local or ``gs://``);
- a directory written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``;
- a hub dataset, ``hf://datasets/OWNER/NAME``, optionally ``:CONFIG`` and ``@SPLIT``
  (``hf://datasets/OWNER/NAME:CONFIG@validation``), loaded with ``datasets.load_dataset``,
  which honours ``HF_HUB_OFFLINE`` and its cache (so a pod host downloads once).

A directory source may name its split the same way (``DIR@validation``). Without one, the
``train`` split is read. Rows keep their order; each example's origin is
``SOURCE split=S row=N`` (N counts from 0, as ``dataset[N]`` does), so a bad row can be found
again. ``datasets`` is imported only when such a source is read: TSV training and the demo
never pay for it.
"""

import os
from dataclasses import dataclass

from etils import epath

from kobart_flax.data_io import DataError, Example

HUB_PREFIX = "hf://datasets/"
FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv"}
DEFAULT_SPLIT = "train"
OWN_FORMATS = (".tsv", ".jsonl", ".txt")  # data_io reads these itself
# save_to_disk writes one of these at the top of the directory.
_SAVED_DATASET_MARKERS = ("dataset_dict.json", "state.json")


@dataclass(frozen=True)
class DatasetSource:
    """A parsed source: what to load (``location``), how (``kind``) and which part."""

    text: str  # as the user wrote it, for messages
    kind: str  # "file" | "saved" | "hub"
    location: str  # a path, or a hub repo id "OWNER/NAME"
    config: str | None
    split: str


def is_dataset_source(source: str) -> bool:
    """Whether ``source`` is for this module (the TSV/JSONL reader takes the rest)."""
    if source.startswith(HUB_PREFIX):
        return True
    if source.lower().endswith(OWN_FORMATS):
        return False  # no existence checks (requests on gs://) for data_io's own files
    path = _split_suffix(source)[0]
    if epath.Path(path).suffix.lower() in FILE_BUILDERS:
        return True
    directory = epath.Path(path)
    return any((directory / marker).exists() for marker in _SAVED_DATASET_MARKERS)


def parse_source(source: str) -> DatasetSource:
    """``hf://datasets/OWNER/NAME[:CONFIG][@SPLIT]``, ``DIR[@SPLIT]`` or a file."""
    location, split = _split_suffix(source)
    if source.startswith(HUB_PREFIX):
        repo, _, config = location.removeprefix(HUB_PREFIX).partition(":")
        if repo.count("/") != 1 or not all(repo.split("/")):
            raise DataError(f"{source}: a hub dataset is hf://datasets/OWNER/NAME[:CONFIG][@SPLIT]")
        return DatasetSource(source, "hub", repo, config or None, split or DEFAULT_SPLIT)
    if epath.Path(location).suffix.lower() in FILE_BUILDERS:
        if split:
            raise DataError(f"{source}: a single file has one split; drop '@{split}'")
        return DatasetSource(source, "file", location, None, DEFAULT_SPLIT)
    return DatasetSource(source, "saved", location, None, split or DEFAULT_SPLIT)


def read_dataset_examples(
    source: str,
    text_column: str = "news",
    summary_column: str = "summary",
    bad_rows: str = "error",
    require_summary: bool = True,
) -> list[Example]:
    """Every example of a ``datasets`` source; bad rows as ``data_io.read_examples`` treats them.

    ``summary_column`` may be missing when ``require_summary`` is False (articles to
    summarize); every other missing column is an error listing the columns that exist.
    """
    from kobart_flax.data_io import apply_bad_row_policy

    parsed = parse_source(source)
    dataset = load(parsed)
    columns = list(dataset.column_names)
    wanted = [text_column] + ([summary_column] if require_summary else [])
    for column in wanted:
        if column not in columns:
            raise DataError(
                f"{source} split={parsed.split}: no column {column!r}; it has "
                f"{', '.join(map(repr, columns))} (set data.text_column / data.summary_column)"
            )
    texts = dataset[text_column]
    summaries = dataset[summary_column] if summary_column in columns else [""] * len(texts)
    rows = (
        _row(f"{source} split={parsed.split} row={index}", news, summary, require_summary)
        for index, (news, summary) in enumerate(zip(texts, summaries, strict=True))
    )
    return apply_bad_row_policy(source, rows, bad_rows)


def load(parsed: DatasetSource):
    """The ``datasets.Dataset`` of one split; loading failures become one-line DataErrors."""
    import datasets

    try:
        if parsed.kind == "file":
            # The file's own single split is called "train" by datasets' file builders.
            return datasets.load_dataset(
                FILE_BUILDERS[epath.Path(parsed.location).suffix.lower()],
                data_files=parsed.location,
                split=DEFAULT_SPLIT,
            )
        if parsed.kind == "saved":
            loaded = datasets.load_from_disk(parsed.location)
        else:
            loaded = load_hub_dataset(parsed.location, parsed.config, parsed.split)
    except (FileNotFoundError, ValueError, OSError) as error:
        raise DataError(f"{parsed.text}: {_first_line(error)}{_offline_hint(parsed)}") from None
    if isinstance(loaded, datasets.DatasetDict):
        if parsed.split not in loaded:
            raise DataError(
                f"{parsed.text}: no split {parsed.split!r}; it has "
                f"{', '.join(map(repr, loaded))} (name one with @SPLIT)"
            )
        return loaded[parsed.split]
    return loaded


def load_hub_dataset(repo: str, config: str | None, split: str):
    """``datasets.load_dataset`` of a hub repo id, or of a local directory laid out as one."""
    import datasets

    try:
        return datasets.load_dataset(repo, config, split=split)
    except ValueError as error:
        # datasets names a missing split as "Unknown split ..."; say which ones exist.
        if "split" in str(error).lower():
            splits = datasets.get_dataset_split_names(repo, config)
            raise ValueError(
                f"no split {split!r}; it has {', '.join(map(repr, splits))} (name one with @SPLIT)"
            ) from None
        raise


def _row(origin: str, news, summary, require_summary: bool) -> Example | DataError:
    for field, value, needed in (("text", news, True), ("summary", summary, require_summary)):
        if not needed and value in (None, ""):
            continue
        if value is None:
            return DataError(f"{origin}: {field} is missing (null)")
        if not isinstance(value, str):
            return DataError(f"{origin}: {field} is {type(value).__name__}, not text")
        if not value.strip():
            return DataError(f"{origin}: {field} is empty")
    # Stripped, as the TSV and JSONL readers strip.
    return Example(news=news.strip(), summary=(summary or "").strip(), origin=origin)


def _split_suffix(source: str) -> tuple[str, str | None]:
    """``"x@validation"`` -> ``("x", "validation")``; a path without ``@`` -> ``(path, None)``."""
    head, at, split = source.rpartition("@")
    if at and split and "/" not in split:
        return head, split
    return source, None


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _offline_hint(parsed: DatasetSource) -> str:
    if parsed.kind != "hub":
        return ""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return " (HF_HUB_OFFLINE is set: download it once with network access on every host)"
    return " (check the name, your network, or `hf auth login` for a private dataset)"
