"""Fixtures shared by test_export.py and test_export_compat.py (``pytest_plugins`` there): one
tiny fine-tuning run and one export of it for the whole session, as training is the slow part."""

from pathlib import Path

import pytest
import torch
from tiny_models import tiny_kobart_config, tiny_run_config
from transformers import BartForConditionalGeneration

import export_pt
from kobart_flax.tokenization import load_tokenizer
from kobart_flax.train import train_and_evaluate

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample"


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A tiny PyTorch BART fine-tuned for two steps by train_flax; returns the workdir."""
    root = tmp_path_factory.mktemp("export")
    tokenizer = load_tokenizer(str(SAMPLE / "tokenizer"))
    config = tiny_kobart_config(len(tokenizer))
    torch.manual_seed(0)
    BartForConditionalGeneration(config).save_pretrained(root / "pretrained")
    lines = (SAMPLE / "train.tsv").read_text(encoding="utf-8").splitlines()
    (root / "train.tsv").write_text("\n".join(lines[:33]) + "\n", encoding="utf-8")
    overrides = [
        f"model.pretrained={root / 'pretrained'}",
        f"model.tokenizer={SAMPLE / 'tokenizer'}",
        f"data.train_path={root / 'train.tsv'}",
        f"data.eval_path={root / 'train.tsv'}",
        f"train.workdir={root / 'run'}",
        "data.max_source_length=128",
        "data.source_buckets=128",
        "data.max_target_length=32",
        "data.target_buckets=32",
        "train.batch_size=16",
        "train.max_steps=2",
        "train.eval_every=0",
        "train.learning_rate=1e-3",
        "train.rouge_every=0",
    ]
    train_and_evaluate(tiny_run_config(overrides))
    return root / "run"


@pytest.fixture(scope="session")
def exported(trained_run, tmp_path_factory) -> Path:
    """``export_pt.py`` of the run's newest step, verified; tests only read it."""
    output = tmp_path_factory.mktemp("exported") / "kobart_summary"
    assert (
        export_pt.main(["--checkpoint", str(trained_run / "checkpoints"), "--output", str(output)])
        == 0
    )
    return output
