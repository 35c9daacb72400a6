"""An export summarizes like predict.py in the user's transformers: 4.57 (.venv-compat) and 5.

Each side loads the directory as KoBART users' code does (``AutoTokenizer``,
``AutoModelForSeq2SeqLM``, and ``pipeline("summarization")`` where it exists; see
compat_check.py) on Korean articles, one of them longer than the 1024-token source limit, and
must give this project's input ids and summaries exactly.
"""

import json
import subprocess
from pathlib import Path

import pytest
from compat_check import report
from timeouts import scaled_timeout

from kobart_flax import FlaxBartForConditionalGeneration
from kobart_flax.summarize import Summarizer
from kobart_flax.tokenization import load_tokenizer

pytest_plugins = ["export_fixtures"]
# A training run and an export (session fixtures), and the transformers 4.57 environment.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
COMPAT_PYTHON = ROOT / ".venv-compat" / "bin" / "python"
SAMPLE = ROOT / "data" / "sample"
SOURCE_LIMIT = 1024  # max_position_embeddings 1026 less BART's offset of 2


@pytest.fixture(scope="session")
def articles() -> list[str]:
    rows = (SAMPLE / "test.tsv").read_text(encoding="utf-8").splitlines()[1:]
    news = [row.split("\t")[0] for row in rows]
    # About 1,500 tokens: the tokenizer must cut it where predict.py does, keeping </s>.
    long_article = " ".join(news[10:40])
    return [*news[:3], long_article]


@pytest.fixture(scope="session")
def ours(exported, articles) -> dict:
    """Input ids and summaries of the project's own path (predict.py's Summarizer) with the
    exported generation config, reading the whole source the model can take."""
    model = FlaxBartForConditionalGeneration.from_pretrained(exported)
    summarizer = Summarizer(
        model.module,
        load_tokenizer(str(exported)),
        model.generation_settings(),
        batch_size=len(articles),
        max_source_length=SOURCE_LIMIT,
        source_buckets=(SOURCE_LIMIT,),  # one compile
    )
    encoded = summarizer.encode(articles)
    assert len(encoded[-1]) == SOURCE_LIMIT and summarizer.is_truncated(articles[-1])
    return {"input_ids": encoded, "summaries": summarizer.summarize(model.params, articles)}


def assert_same_as_ours(result: dict, ours: dict) -> None:
    assert result["model_max_length"] == SOURCE_LIMIT
    assert result["ties_restored"]
    assert result["input_ids"] == ours["input_ids"]
    assert result["generate"] == ours["summaries"]
    assert all(ours["summaries"])


def test_transformers_4_57_tokenizer_model_and_pipeline_match_predict(
    exported, articles, ours, tmp_path
):
    if not COMPAT_PYTHON.exists():
        pytest.fail(
            f"{COMPAT_PYTHON} is missing: run scripts/compat_env.sh (scripts/test.sh does) to "
            "build the transformers 4.57 environment this test loads exports in"
        )
    articles_file = tmp_path / "articles.json"
    articles_file.write_text(json.dumps(articles, ensure_ascii=False), encoding="utf-8")
    completed = subprocess.run(
        [
            str(COMPAT_PYTHON),
            str(ROOT / "tests" / "compat_check.py"),
            str(exported),
            str(articles_file),
        ],
        capture_output=True,
        text=True,
        timeout=scaled_timeout(300),
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.splitlines()[-1])
    assert result["transformers"].startswith("4.57.")
    # KoBART's class; 4.x had no TokenizersBackend (what transformers 5 calls it).
    assert result["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert_same_as_ours(result, ours)
    assert result["pipeline"] == ours["summaries"]


def test_transformers_5_tokenizer_and_model_match_predict(exported, articles, ours):
    result = report(str(exported), articles)
    assert result["transformers"].startswith("5.")
    assert_same_as_ours(result, ours)
