"""The README.md (model card) of an exported model, written from the run that trained it.

Everything in it comes from the checkpoint (config, history, data position) and the export
itself (decoding settings, source limit), so a card cannot drift from its model. The YAML
header is the Hugging Face hub's: it files the model under Korean summarization.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

# The hub's repository ids: "owner/name" (a local path such as "runs/x" can look the same,
# so callers only pass what the run named as its pretrained model).
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
ROUGE_NAMES = (("rouge1", "ROUGE-1"), ("rouge2", "ROUGE-2"), ("rougeL", "ROUGE-L"))
DECODING_FIELDS = (
    "num_beams",
    "max_length",
    "min_length",
    "length_penalty",
    "no_repeat_ngram_size",
    "early_stopping",
)


def hub_base_model(pretrained: str | None) -> str | None:
    """The hub id a run started from, or None (random init, or a local/gs:// directory)."""
    if pretrained and "://" not in pretrained and HUB_ID.match(pretrained):
        return pretrained
    return None


def model_card(
    *,
    metadata: Mapping[str, Any],
    history: Mapping[str, Any],
    steps_per_epoch: int | None,
    generation: Mapping[str, Any],
    max_source_tokens: int,
    dtype: str,
    license_name: str,
    base_model: str | None,
    datasets: Sequence[str],
) -> str:
    """The card's Markdown; ``history`` is that of the exported step."""
    config = metadata.get("config", {})
    model, data, train = (config.get(name, {}) for name in ("model", "data", "train"))
    model_config = metadata["model_config"]
    step = len(history.get("train_losses", []))
    header = {
        "language": ["ko"],
        "license": license_name,
        **({"base_model": base_model} if base_model else {}),
        "pipeline_tag": "summarization",
        **({"datasets": list(datasets)} if datasets else {}),
        "library_name": "transformers",
        "tags": ["bart", "kobart", "summarization", "korean", "kobart-flax"],
    }
    # JSON values are valid YAML scalars and lists, and quote what YAML would misread.
    yaml = "\n".join(
        f"{key}: {json.dumps(value, ensure_ascii=False)}" for key, value in header.items()
    )
    started_from = model.get("pretrained") or "random initialisation"
    lines = [
        "---",
        yaml,
        "---",
        "",
        "# KoBART news summarization",
        "",
        f"A BART ({_architecture(model_config)}) fine-tuned for abstractive Korean summarization "
        f"from `{started_from}` with kobart-flax (JAX/Flax), exported at step {step:,} as "
        f"PyTorch weights ({dtype}).",
        "",
        "## Usage",
        "",
        "```python",
        "from transformers import AutoModelForSeq2SeqLM, AutoTokenizer",
        "",
        'tokenizer = AutoTokenizer.from_pretrained("MODEL")',
        'model = AutoModelForSeq2SeqLM.from_pretrained("MODEL").eval()',
        "# The tokenizer adds <s> ... </s> itself; truncation=True cuts articles at "
        f"{max_source_tokens} tokens.",
        'inputs = tokenizer(article, truncation=True, return_tensors="pt")',
        "summary = tokenizer.decode(model.generate(**inputs)[0], skip_special_tokens=True)",
        "```",
        "",
        'In transformers 4.x, `pipeline("summarization", model="MODEL")(article, '
        "truncation=True)` gives the same summary. `MODEL` is this directory or its hub id.",
        "",
        "## Training",
        "",
        *_training_lines(data, train, metadata, step, steps_per_epoch),
        "",
        "## Evaluation",
        "",
        *_evaluation_lines(history.get("evaluations", []), data, train, step),
        "",
        "## Decoding",
        "",
        "`generation_config.json` holds the settings the run evaluated with, and `generate()` "
        "uses them by default: "
        + ", ".join(f"{name} {generation[name]}" for name in DECODING_FIELDS if name in generation)
        + ".",
        "",
        "## Limits",
        "",
        f"- Input is cut at {max_source_tokens} tokens (`<s>` and `</s>` included): BART's "
        f"learned positions stop there, and the text after it is not read. Training saw at "
        f"most {data.get('max_source_length', max_source_tokens)} source tokens.",
        f"- Summaries are at most {generation.get('max_length', '?')} tokens, start token "
        "included.",
        "- Trained on news; other kinds of text were not evaluated. Like any abstractive "
        "model it can state facts that are not in the article.",
        "",
    ]
    return "\n".join(lines)


def _architecture(model_config: Mapping[str, Any]) -> str:
    return (
        f"d_model {model_config['d_model']}, {model_config['encoder_layers']}+"
        f"{model_config['decoder_layers']} layers, vocabulary {model_config['vocab_size']:,}"
    )


def _training_lines(
    data: Mapping[str, Any],
    train: Mapping[str, Any],
    metadata: Mapping[str, Any],
    step: int,
    steps_per_epoch: int | None,
) -> list[str]:
    batch = train.get("batch_size")
    rows = "packed rows" if data.get("packing") else "examples"
    epoch = (
        f"{steps_per_epoch:,} steps of {batch} {rows} per epoch"
        if steps_per_epoch and batch
        else "size not recorded"
    )
    lines = [
        f"- Training data: `{data.get('train_path')}` ({epoch})",
        f"- Evaluation data: `{data.get('eval_path')}`",
        f"- Steps: {step:,}"
        + (f" of {total:,} planned" if (total := metadata.get("total_steps")) else ""),
        f"- Source / target length: {data.get('max_source_length')} / "
        f"{data.get('max_target_length')} tokens",
    ]
    hyper = ("learning_rate", "warmup_ratio", "weight_decay", "max_grad_norm", "label_smoothing")
    lines.append(
        "- Optimizer: AdamW, "
        + ", ".join(f"{name} {train[name]}" for name in hyper if name in train)
        + ", linear warmup and decay"
    )
    return lines


def _evaluation_lines(
    evaluations: Sequence[Sequence[Any]],
    data: Mapping[str, Any],
    train: Mapping[str, Any],
    step: int,
) -> list[str]:
    if not evaluations:
        return ["The run recorded no evaluation."]
    lines = [
        f"On `{data.get('eval_path')}` during training (ROUGE F1 over "
        f"{train.get('rouge_tokenization', 'mecab')} tokens, as the Dacon competition scored):",
        "",
        "| step | eval loss | " + " | ".join(label for _, label in ROUGE_NAMES) + " |",
        "| --- | --- | " + " | ".join("---" for _ in ROUGE_NAMES) + " |",
    ]
    for eval_step, metrics in evaluations:
        marker = " (this model)" if eval_step == step else ""
        cells = [f"{eval_step:,}{marker}", _number(metrics.get("eval_loss"))]
        cells += [_number(metrics.get(name)) for name, _ in ROUGE_NAMES]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
