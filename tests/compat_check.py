"""Use an exported model the way a KoBART user's own code does, with plain transformers.

    python tests/compat_check.py EXPORT_DIR ARTICLES_JSON   # prints a JSON report

Runs in .venv-compat (transformers 4.57, see scripts/compat_env.sh) as a subprocess of
tests/test_export_compat.py, and in-process in the main environment (transformers 5). Needs
only transformers and torch: nothing of this project is imported.
"""

import json
import sys

import torch
import transformers
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
from transformers.pipelines import SUPPORTED_TASKS


def report(export_dir: str, articles: list[str]) -> dict:
    """Per article: the ids ``tokenizer(article, truncation=True)`` gives, and the summary of
    ``model.generate`` and (where transformers has it) ``pipeline("summarization")``."""
    tokenizer = AutoTokenizer.from_pretrained(export_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(export_dir).eval()
    shared = model.get_input_embeddings().weight
    tied = [
        model.get_output_embeddings().weight,
        model.model.encoder.embed_tokens.weight,
        model.model.decoder.embed_tokens.weight,
    ]
    result = {
        "transformers": transformers.__version__,
        "tokenizer_class": type(tokenizer).__name__,
        "model_max_length": tokenizer.model_max_length,
        "ties_restored": all(weight.data_ptr() == shared.data_ptr() for weight in tied),
        "input_ids": [],
        "generate": [],
    }
    for article in articles:
        inputs = tokenizer(article, truncation=True, return_tensors="pt")
        with torch.no_grad():
            output = model.generate(**inputs)
        result["input_ids"].append(inputs["input_ids"][0].tolist())
        result["generate"].append(tokenizer.decode(output[0], skip_special_tokens=True).strip())
    if "summarization" in SUPPORTED_TASKS:  # transformers 5 removed the task
        summarizer = transformers.pipeline("summarization", model=export_dir, device="cpu")
        summaries = summarizer(articles, truncation=True)
        result["pipeline"] = [summary["summary_text"].strip() for summary in summaries]
    return result


if __name__ == "__main__":
    export_dir, articles_file = sys.argv[1:]
    with open(articles_file, encoding="utf-8") as file:
        print(json.dumps(report(export_dir, json.load(file)), ensure_ascii=False))
