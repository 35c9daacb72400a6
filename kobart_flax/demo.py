"""The Gradio demo: paste a Korean article, get its summary; or summarize a whole file.

    python app.py                                  # the quickstart's runs/tiny/final_model
    python app.py --model DIR --port 7860 --host 0.0.0.0

The page is a thin layer over :class:`SummaryService`, whose handlers are plain methods
(tested without a browser). Generation goes through :class:`~kobart_flax.summarize.Summarizer`,
like predict.py, so the demo shows exactly what evaluation scores.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import gradio as gr
import jax

from kobart_flax import compile_cache
from kobart_flax.batching import pick_bucket
from kobart_flax.data_io import read_articles, read_examples
from kobart_flax.loading import LoadedModel, ModelLoadError
from kobart_flax.loading import load_model as load_saved_model
from kobart_flax.log_setup import setup_logging
from kobart_flax.predict import write_predictions
from kobart_flax.summarize import Summarizer, check_max_source_length, position_limit

logger = logging.getLogger(__name__)

QUICKSTART_MODEL = "runs/tiny/final_model"
DEMO_ARTICLES = Path(__file__).resolve().parent.parent / "data" / "sample" / "demo_articles.tsv"

# Every distinct setting is a separate XLA program (settings are static under jit); keeping a
# few covers a user trying values back and forth without holding every program ever compiled.
SUMMARIZER_CACHE_SIZE = 8
# A file is summarized in batches of this many articles: one program per bucket, better
# throughput than one article at a time.
FILE_BATCH_SIZE = 8
# The file tab runs on the same device as everyone's single articles; cap how long one
# upload can hold it.
MAX_FILE_ARTICLES = 1000
PREVIEW_ROWS = 20
PREVIEW_CHARS = 80
# Gradio shows a progress bar for a handler parameter whose default is a gr.Progress; called
# outside a request (tests), it does nothing.
PROGRESS_BAR = gr.Progress()


@dataclasses.dataclass(frozen=True)
class GenerationControls:
    """The page's sliders, with predict.py's defaults."""

    num_beams: int = 4
    max_new_tokens: int = 127  # predict.py's --max-length 128 includes the start token
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0

    @classmethod
    def from_ui(cls, num_beams, max_new_tokens, length_penalty, no_repeat_ngram_size):
        # Sliders deliver floats (and the API whatever a client sends).
        return cls(
            int(num_beams), int(max_new_tokens), float(length_penalty), int(no_repeat_ngram_size)
        )


def load_model(source: str, dtype: str = "float32") -> LoadedModel:
    """Any source predict.py takes: a model directory, a hub name, an Orbax checkpoint."""
    try:
        return load_saved_model(source, dtype)
    except ModelLoadError as error:
        if source != QUICKSTART_MODEL:
            raise
        raise ModelLoadError(
            f"{error}. Train the quickstart model first: python train_flax.py --config "
            "configs/tiny.py (see README.md), or pass --model DIR"
        ) from error


class SummaryService:
    """One loaded model, a bounded cache of compiled Summarizers, and the page's handlers."""

    def __init__(
        self,
        loaded: LoadedModel,
        max_source_length: int = 512,
        file_batch_size: int = FILE_BATCH_SIZE,
    ):
        # Now, not at the first request: every summary would come back empty past the limit.
        check_max_source_length(max_source_length, loaded.model.module)
        self.loaded = loaded
        self.max_source_length = max_source_length
        self.file_batch_size = file_batch_size
        self._summarizers: collections.OrderedDict[tuple, Summarizer] = collections.OrderedDict()
        # (controls, batch size, bucket) combinations already compiled, to tell the user
        # when a request's time includes compiling.
        self._compiled: set[tuple] = set()
        self._lock = threading.Lock()  # handlers run on several worker threads
        # Prediction files to download, removed when the server exits.
        self._outputs = tempfile.TemporaryDirectory(prefix="kobart_demo_")

    def summarizer(self, controls: GenerationControls, batch_size: int) -> Summarizer:
        """The Summarizer for these settings, most recently used kept, oldest evicted."""
        key = (controls, batch_size)
        with self._lock:
            if key in self._summarizers:
                self._summarizers.move_to_end(key)
                return self._summarizers[key]
        settings = self.loaded.model.generation_settings(**dataclasses.asdict(controls))
        summarizer = Summarizer(
            self.loaded.model.module,
            self.loaded.tokenizer,
            settings,
            batch_size=batch_size,
            max_source_length=self.max_source_length,
        )
        with self._lock:
            self._summarizers[key] = summarizer
            while len(self._summarizers) > SUMMARIZER_CACHE_SIZE:
                evicted, _ = self._summarizers.popitem(last=False)
                self._compiled = {c for c in self._compiled if c[:2] != evicted}
        return summarizer

    def warm_up(self, controls: GenerationControls = GenerationControls()) -> float:
        """Compiles the default settings for every source bucket; returns the seconds taken.

        One text per bucket, cut from the example articles to land mid-bucket, so any length
        of article is fast on the first request.
        """
        start = time.perf_counter()
        summarizer = self.summarizer(controls, batch_size=1)
        tokenizer = self.loaded.tokenizer
        long_text = " ".join(example.news for example in read_examples(str(DEMO_ARTICLES)) * 8)
        ids = tokenizer(long_text, add_special_tokens=False)["input_ids"]
        shorter = 2  # <s> and </s>
        for bucket in summarizer.source_buckets:
            text = tokenizer.decode(ids[: (shorter + bucket) // 2 - 2])
            self._run(summarizer, controls, [text])
            shorter = bucket
        return time.perf_counter() - start

    def summarize_article(
        self, article: str, num_beams, max_new_tokens, length_penalty, no_repeat_ngram_size
    ) -> tuple[str, str]:
        """(summary, a Markdown note: token count, truncation, generation time)."""
        if not article or not article.strip():
            return "", "Paste or type an article above, then press **Summarize**."
        controls = GenerationControls.from_ui(
            num_beams, max_new_tokens, length_penalty, no_repeat_ngram_size
        )
        try:
            summarizer = self.summarizer(controls, batch_size=1)
            token_count = len(self.loaded.tokenizer(article, add_special_tokens=False)["input_ids"])
            start = time.perf_counter()
            (summary,), compiled = self._run(summarizer, controls, [article])
            seconds = time.perf_counter() - start
        except Exception as error:
            raise request_failed(error) from error
        notes = [f"Input: {token_count:,} tokens."]
        if summarizer.is_truncated(article):
            notes.append(
                f"**Truncated**: the model reads at most {self.max_source_length} tokens "
                f"(with `<s>` and `</s>`), so only the first {self.max_source_length - 2} "
                "were summarized."
            )
        if not summary:
            # Otherwise an empty box reads as a page that failed to update.
            notes.append("The model generated no text, only the end of the sequence.")
        notes.append(f"Generated in {format_seconds(seconds)}{compile_note(compiled)}.")
        return summary, " ".join(notes)

    def summarize_file(
        self,
        path: str | None,
        num_beams,
        max_new_tokens,
        length_penalty,
        no_repeat_ngram_size,
        progress: Callable = PROGRESS_BAR,
    ) -> tuple[str, list[list[str]], str | None]:
        """(a Markdown note, preview rows [news, prediction], the predictions TSV to download)."""
        if not path:
            return "Upload a .tsv or .csv file with a `news` column first.", [], None
        try:
            examples = read_articles(path)
        except (ValueError, OSError) as error:  # DataError is a ValueError
            # Name the file as the user knows it, not by Gradio's upload directory; a bad
            # file is the user's to fix, so no traceback in the server log.
            message = str(error).replace(str(Path(path).parent) + "/", "")
            raise gr.Error(message, print_exception=False) from error
        if len(examples) > MAX_FILE_ARTICLES:
            raise gr.Error(
                f"{Path(path).name} has {len(examples):,} articles; the demo summarizes at most "
                f"{MAX_FILE_ARTICLES:,} per file. For more, use predict.py.",
                print_exception=False,
            )
        controls = GenerationControls.from_ui(
            num_beams, max_new_tokens, length_penalty, no_repeat_ngram_size
        )
        try:
            summarizer = self.summarizer(controls, batch_size=self.file_batch_size)
            start = time.perf_counter()
            predictions, compiled = self._run(
                summarizer,
                controls,
                [example.news for example in examples],
                lambda done, total: progress((done, total), desc="Summarizing", unit="articles"),
            )
            seconds = time.perf_counter() - start
            # A directory per request: two uploads of the same name must not collide.
            output = Path(tempfile.mkdtemp(dir=self._outputs.name)) / (
                f"{Path(path).stem}.predictions.tsv"
            )
            write_predictions(str(output), examples, predictions)
        except Exception as error:
            raise request_failed(error) from error
        truncated = sum(summarizer.is_truncated(example.news) for example in examples)
        note = (
            f"Summarized {len(examples):,} articles in {format_seconds(seconds)}"
            f"{compile_note(compiled)}."
        )
        if truncated:
            note += f" {truncated:,} were truncated to {self.max_source_length} tokens."
        preview = [
            [shorten(example.news), prediction]
            for example, prediction in zip(examples, predictions, strict=True)
        ][:PREVIEW_ROWS]
        return note, preview, str(output)

    def _run(
        self,
        summarizer: Summarizer,
        controls: GenerationControls,
        texts: Sequence[str],
        progress: Callable[[int, int], None] | None = None,
    ) -> tuple[list[str], bool]:
        """Summaries, and whether this call compiled a program first."""
        buckets = {
            (controls, summarizer.batch_size, pick_bucket(len(ids), summarizer.source_buckets))
            for ids in summarizer.encode(texts)
        }
        compiled = not buckets <= self._compiled
        summaries = summarizer.summarize(self.loaded.model.params, texts, progress)
        with self._lock:
            self._compiled |= buckets
        return summaries, compiled


def request_failed(error: Exception) -> gr.Error:
    """The error the page shows for a failed request; the traceback goes to the log."""
    logger.exception("request failed")
    return gr.Error(f"Summarization failed: {type(error).__name__}: {error}")


def compile_note(compiled: bool) -> str:
    return (
        " (including compiling for these settings; the next request is faster)" if compiled else ""
    )


def format_seconds(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def shorten(text: str) -> str:
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"


def build_demo(service: SummaryService) -> gr.Blocks:
    """The page: an Article tab, a File tab, and generation settings shared by both."""
    examples = read_examples(str(DEMO_ARTICLES))
    device = jax.devices()[0]
    with gr.Blocks(
        title="KoBART summarization",
        analytics_enabled=False,  # no calls home: the demo must work offline
        delete_cache=(3600, 3600),  # uploads and served files older than an hour, hourly
    ) as demo:
        gr.Markdown(
            "# KoBART 뉴스 요약 · Korean news summarization\n"
            f"Model `{service.loaded.source}` on {device.platform.upper()} "
            f"({device.device_kind}); articles are read up to "
            f"{service.max_source_length} tokens."
        )
        with gr.Tab("Article"):
            with gr.Row():
                with gr.Column(scale=3):
                    article = gr.Textbox(
                        label="Article (기사)",
                        lines=12,
                        placeholder="요약할 기사를 붙여 넣으세요. Paste an article here.",
                        elem_id="article",
                    )
                    summarize_button = gr.Button(
                        "Summarize", variant="primary", elem_id="summarize"
                    )
                with gr.Column(scale=2):
                    summary = gr.Textbox(
                        label="Summary (요약)",
                        lines=6,
                        interactive=False,
                        buttons=["copy"],
                        elem_id="summary",
                    )
                    article_note = gr.Markdown(elem_id="article-note")
            gr.Examples(
                [[example.news] for example in examples],
                inputs=article,
                label="Example articles (bundled, hand-written)",
                example_labels=[shorten(example.news) for example in examples],
            )
        with gr.Tab("File"):
            gr.Markdown(
                "Upload a `.tsv` or `.csv` with a header row and a `news` column (a `summary` "
                "column is kept as the reference), or a `.jsonl` / `.txt` as predict.py reads "
                "them. The predictions come back as a TSV: `news`, `reference`, `prediction`."
            )
            upload = gr.File(
                label="Articles file",
                file_types=[".tsv", ".csv", ".jsonl", ".txt"],
                elem_id="upload",
            )
            file_button = gr.Button("Summarize file", variant="primary", elem_id="summarize-file")
            file_note = gr.Markdown(elem_id="file-note")
            preview = gr.Dataframe(
                headers=["news", "prediction"],
                label=f"Preview (first {PREVIEW_ROWS} rows)",
                interactive=False,
                wrap=True,
            )
            download = gr.File(label="Predictions (TSV)", interactive=False, elem_id="download")
        with gr.Accordion("Generation settings", open=True):
            defaults = GenerationControls()
            # The start token and the summary must fit the decoder's positions: past them every
            # summary comes back empty.
            longest_summary = min(512, position_limit(service.loaded.model.module) - 1)
            with gr.Row():
                controls = [
                    gr.Slider(1, 8, defaults.num_beams, step=1, label="Beams (num_beams)"),
                    gr.Slider(
                        8,
                        longest_summary,
                        min(defaults.max_new_tokens, longest_summary),
                        step=1,
                        label="Max summary length (tokens)",
                    ),
                    gr.Slider(0.0, 3.0, defaults.length_penalty, step=0.1, label="Length penalty"),
                    gr.Slider(
                        0, 6, defaults.no_repeat_ngram_size, step=1, label="No-repeat n-gram size"
                    ),
                ]
            gr.Markdown(
                "Each new combination of settings compiles once (a few seconds), then runs at "
                "full speed. The defaults were compiled at start-up."
            )
        summarize_button.click(
            service.summarize_article,
            [article, *controls],
            [summary, article_note],
            api_name="summarize",
        )
        file_button.click(
            service.summarize_file,
            [upload, *controls],
            [file_note, preview, download],
            api_name="summarize_file",
        )
    return demo


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="A Gradio page that summarizes Korean news.")
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--model",
        default=QUICKSTART_MODEL,
        help="model directory (train output or exported), hub name or Orbax checkpoint "
        "directory (default: %(default)s)",
    )
    source.add_argument(
        "--checkpoint", help="an Orbax checkpoint directory (a run's workdir or its checkpoints/)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other machines")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    parser.add_argument("--max-source-length", type=int, default=512)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument(
        "--concurrency-limit",
        type=int,
        default=1,
        help="requests generating at once per tab; more only helps with spare accelerator memory",
    )
    compile_cache.add_argument(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up probes
    args = parse_args(argv)
    # A restarted demo loads its warm-up's programs instead of compiling them again.
    compile_cache.enable(args.compile_cache)
    try:
        loaded = load_model(args.checkpoint or args.model, args.dtype)
    except ModelLoadError as error:
        logging.error("%s", error)
        return 2
    try:
        check_max_source_length(args.max_source_length, loaded.model.module, "--max-source-length")
    except ValueError as error:
        logging.error("%s", error)
        return 2
    service = SummaryService(loaded, args.max_source_length)
    logger.info("compiling generation for the default settings ...")
    logger.info("compiled in %.1f s", service.warm_up())
    demo = build_demo(service)
    demo.queue(default_concurrency_limit=args.concurrency_limit)
    # quiet: Gradio's own banner talks about launch(share=True); this command has --share.
    _, local_url, share_url = demo.launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        quiet=True,
        prevent_thread_lock=True,
    )
    logger.info("serving on %s%s", local_url, f" and {share_url}" if share_url else "")
    demo.block_thread()
    return 0
