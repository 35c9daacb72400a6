"""Summarize a file of articles and score the summaries with Korean ROUGE.

    python predict.py --model runs/tiny/final_model --input data/sample/test.tsv \\
        --output runs/tiny/predictions.tsv --num-beams 4

Input: TSV (``news`` and optionally ``summary`` columns), JSONL (same fields) or plain
text (one article per line). Output: a TSV with ``news``, ``reference`` and
``prediction`` in the input order. With references, ROUGE-1/2/L are printed, next to a
lead-sentence baseline (the article's first sentence as its summary).
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import os
import re
import sys
from collections.abc import Sequence

from etils import epath
from tqdm import tqdm

from kobart_flax import compile_cache, storage
from kobart_flax.config import DecodingConfig
from kobart_flax.data_io import DataError, Example, read_examples
from kobart_flax.korean_rouge import TOKENIZATIONS, rouge
from kobart_flax.loading import ModelLoadError, check_hub_name, first_line, load_model
from kobart_flax.log_setup import setup_logging
from kobart_flax.summarize import (
    Summarizer,
    all_devices_mesh,
    check_max_length,
    check_max_source_length,
    default_max_source_length,
)
from kobart_flax.tokenization import load_tokenizer

logger = logging.getLogger(__name__)

SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
GENERATION_FLAGS = (
    "num_beams",
    "max_length",
    "min_length",
    "length_penalty",
    "no_repeat_ngram_size",
)
# A model without generation_config.json (a training run's final_model/) decodes as training's
# ROUGE evaluation does by default, not with transformers' greedy 20 tokens, which cut
# summaries short; its other defaults (min_length 0, ...) are transformers' too. A model that
# has the file gets what it says, as in transformers.
FALLBACK_DECODING = {
    "num_beams": DecodingConfig.num_beams,
    "max_length": DecodingConfig.max_length,
}


def lead_sentence(text: str) -> str:
    return SENTENCE_END.split(text.strip(), maxsplit=1)[0]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        required=True,
        help="model directory (train output or exported), hub name, or Orbax checkpoint "
        "directory (a run's workdir, its checkpoints/ or one step in it)",
    )
    parser.add_argument(
        "--tokenizer", help="tokenizer directory or hub name (default: the model's own)"
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--input",
        help=".tsv, .jsonl, .txt (one article a line), .parquet, .arrow, .csv, a save_to_disk "
        "directory or hf://datasets/OWNER/NAME[:CONFIG][@SPLIT] (local or gs://); '-' reads one "
        "article from standard input and prints its summary alone",
    )
    source.add_argument("--text", help="one article; prints its summary alone")
    parser.add_argument("--text-column", default="news", help="article column of a datasets input")
    parser.add_argument(
        "--summary-column", default="summary", help="reference column of a datasets input"
    )
    parser.add_argument("--output", help="TSV to write (default: print summaries only)")
    model_default = "default: the model's generation_config.json"
    parser.add_argument(
        "--num-beams", type=int, help=f"{model_default}, else {FALLBACK_DECODING['num_beams']}"
    )
    parser.add_argument(
        "--max-length",
        type=int,
        help=f"summary tokens + 1 ({model_default}, else {FALLBACK_DECODING['max_length']})",
    )
    parser.add_argument("--min-length", type=int, help=f"{model_default}, else 0")
    parser.add_argument("--length-penalty", type=float, help=f"{model_default}, else 1.0")
    parser.add_argument("--no-repeat-ngram-size", type=int, help=f"{model_default}, else 0")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--max-source-length",
        type=int,
        help="article tokens read, <s> and </s> included; longer ones are truncated (default: "
        "the tokenizer's model_max_length if the model has that many positions, as an export's "
        "1024, else all the model's positions, 1024 for KoBART)",
    )
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--tokenization", choices=TOKENIZATIONS, default="mecab")
    parser.add_argument("--bad-rows", choices=("error", "skip"), default="error")
    compile_cache.add_argument(parser)
    return parser.parse_args(argv)


def write_predictions(path: str, examples: Sequence[Example], predictions: Sequence[str]) -> None:
    buffer = io.StringIO()
    # pandas-compatible quoting, like the training TSVs (see data_io.write_tsv).
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(("news", "reference", "prediction"))
    for example, prediction in zip(examples, predictions, strict=True):
        writer.writerow((example.news, example.summary, prediction))
    epath.Path(path).write_text(buffer.getvalue(), encoding="utf-8")


def format_rouge(name: str, scores: dict[str, float]) -> str:
    return (
        f"{name:<22} ROUGE-1 {scores['rouge1_f']:.4f}  ROUGE-2 {scores['rouge2_f']:.4f}  "
        f"ROUGE-L {scores['rougeL_f']:.4f}  (F1)"
    )


def read_input(args: argparse.Namespace) -> list[Example]:
    """The articles of ``--input`` (a file, a datasets source or ``-``) or ``--text``."""
    if args.text is None and args.input != "-":
        return read_examples(
            args.input,
            args.bad_rows,
            require_summary=False,
            text_column=args.text_column,
            summary_column=args.summary_column,
        )
    origin = "--text" if args.text is not None else "standard input"
    text = args.text if args.text is not None else sys.stdin.read()
    if not text.strip():
        raise DataError(f"{origin}: empty article")
    return [Example(news=text.strip(), summary="", origin=origin)]


def tokenizer_flag(name: str):
    """The ``--tokenizer`` override; a mistyped one is one line, as a mistyped ``--model`` is."""
    if not storage.is_remote(name) and not os.path.exists(name):
        check_hub_name(name, "tokenizer")
    try:
        return load_tokenizer(name)
    except OSError as error:
        raise ModelLoadError(f"cannot load a tokenizer from {name}: {first_line(error)}") from error


def run(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Summarize ``args.input``; returns ROUGE of the model and of the baseline, if scored."""
    compile_cache.enable(args.compile_cache)
    examples = read_input(args)
    loaded = load_model(args.model, args.dtype, with_tokenizer=args.tokenizer is None)
    model = loaded.model
    tokenizer = loaded.tokenizer if args.tokenizer is None else tokenizer_flag(args.tokenizer)
    requested = {name: getattr(args, name) for name in GENERATION_FLAGS}
    # transformers marks a generation config made from config.json, not read from its own file.
    if getattr(model.generation_config, "_from_model_config", False):
        for name, fallback in FALLBACK_DECODING.items():
            if requested[name] is None:
                requested[name] = fallback
    settings = model.generation_settings(**requested)
    max_source_length = args.max_source_length
    if max_source_length is None:
        max_source_length = default_max_source_length(tokenizer, model.module)
    chosen = ", ".join(f"{name} {getattr(settings, name)}" for name in GENERATION_FLAGS)
    logger.info("generation: %s; max_source_length %d", chosen, max_source_length)
    check_max_source_length(max_source_length, model.module, "--max-source-length")
    check_max_length(settings.max_length, model.module, "--max-length")
    summarizer = Summarizer(
        model.module,
        tokenizer,
        settings,
        batch_size=args.batch_size,
        max_source_length=max_source_length,
        # Each batch split over all the devices, not generated on the first alone.
        mesh=all_devices_mesh(),
    )
    texts = [example.news for example in examples]
    truncated = summarizer.count_truncated(texts)
    if truncated:
        logger.warning(
            "%d of %d articles are longer than --max-source-length %d tokens (<s> and </s> "
            "included) and were truncated: their summaries read only the first %d",
            truncated,
            len(texts),
            max_source_length,
            max_source_length - 2,
        )
    with tqdm(total=len(examples), desc="summarizing", unit="article") as bar:
        predictions = summarizer.summarize(
            model.params,
            texts,
            progress=lambda done, _: bar.update(done - bar.n),
        )
    if args.output:
        write_predictions(args.output, examples, predictions)
        logger.info("wrote %d predictions to %s", len(predictions), args.output)
    else:
        for prediction in predictions:
            print(prediction)

    scored = [i for i, example in enumerate(examples) if example.summary]
    if not scored:
        return {}
    references = [examples[i].summary for i in scored]
    names = [examples[i].origin for i in scored]
    results = {
        "model": rouge([predictions[i] for i in scored], references, args.tokenization, names),
        "lead_sentence": rouge(
            [lead_sentence(examples[i].news) for i in scored], references, args.tokenization, names
        ),
    }
    print(f"{len(scored)} articles with references, {args.tokenization} tokens:")
    print(format_rouge("model", results["model"]))
    print(format_rouge("lead-sentence baseline", results["lead_sentence"]))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    args = parse_args(argv)
    try:
        run(args)
    except (DataError, FileNotFoundError, ModelLoadError, ValueError) as error:
        logging.error("%s", error)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
