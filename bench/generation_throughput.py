"""Generation throughput: kobart-flax's ``Summarizer`` against transformers' PyTorch ``generate``.

Same random weights (the PyTorch model saved with ``save_pretrained`` and loaded by
``FlaxBartForConditionalGeneration.from_pretrained``), the same synthetic Dacon-like
articles, beam search with 4 beams to the same ``max_length``. kobart-flax runs its real
path (``Summarizer.summarize``: sort, bucket, jitted search); PyTorch gets the same batches
(longest articles first), each padded to its longest article as a tokenizer would. The two
take turns after a warm-up; the table gives medians. The small model also checks that both
produce the same tokens (the tests check this on a tiny model).

    python -m bench.generation_throughput                # small model, CPU defaults
    python -m bench.generation_throughput --model base   # kobart-base shapes
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

# Also runnable as a file (python bench/generation_throughput.py): the repository root on the path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# PyTorch's OpenMP threads otherwise spin-wait at every barrier: on a shared machine one
# descheduled thread then stalls every op, and the baseline runs 2-4x slower than it can
# (docs/PERFORMANCE.md, "Load"). Set before torch loads; OMP_WAIT_POLICY=ACTIVE overrides.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
from transformers import BartForConditionalGeneration

from bench import model_shapes, report, synthetic_data, timing, torch_baseline
from kobart_flax.pretrained import FlaxBartForConditionalGeneration
from kobart_flax.summarize import Summarizer

SPECIAL_IDS = frozenset((model_shapes.BOS, model_shapes.EOS, model_shapes.USR, model_shapes.PAD))
# (articles, batch size, max_length, repeats) that keep a 2-core CPU run under 10 minutes.
CPU_DEFAULTS = {"small": (16, 8, 64, 3), "base": (8, 4, 32, 3)}


class IdTokenizer:
    """Stands in for KoBART's tokenizer: a text is its token ids written out, space-separated.

    ``Summarizer`` then runs unchanged on synthetic ids, and its output compares with
    PyTorch's token for token.
    """

    bos_token_id = model_shapes.BOS
    eos_token_id = model_shapes.EOS
    pad_token_id = model_shapes.PAD

    def __call__(self, texts: list[str], add_special_tokens: bool = False) -> dict:
        return {"input_ids": [[int(word) for word in text.split()] for text in texts]}

    def batch_decode(self, sequences, skip_special_tokens: bool = True) -> list[str]:
        return [
            " ".join(str(int(i)) for i in row if not (skip_special_tokens and i in SPECIAL_IDS))
            for row in sequences
        ]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("small", "base"), default="small")
    parser.add_argument("--articles", type=int, help="articles summarized per turn")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--max-length", type=int, help="decoder tokens, the start token included")
    parser.add_argument("--repeats", type=int, help="timed turns per framework")
    parser.add_argument("--beams", type=int, default=4)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--seed", type=int, default=0)
    report.add_json_argument(parser)
    args = parser.parse_args()
    defaults = CPU_DEFAULTS[args.model]
    args.articles = args.articles or defaults[0]
    args.batch_size = args.batch_size or defaults[1]
    args.max_length = args.max_length or defaults[2]
    args.repeats = args.repeats or defaults[3]
    return args


def torch_batches(articles: list[np.ndarray], batch_size: int, device: torch.device) -> list:
    """``Summarizer``'s batches (longest first), each padded to its own longest article."""
    order = np.argsort([-len(ids) for ids in articles], kind="stable")
    batches = []
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        length = max(len(articles[row]) for row in rows)
        input_ids = np.full((len(rows), length), model_shapes.PAD, np.int64)
        for slot, row in enumerate(rows):
            input_ids[slot, : len(articles[row])] = articles[row]
        input_ids = torch.from_numpy(input_ids).to(device)
        batches.append((rows, input_ids, input_ids.ne(model_shapes.PAD).long()))
    return batches


def main() -> None:
    args = parse_args()
    torch_baseline.use_all_cores()
    env = report.environment()
    report.print_environment(env)
    print(
        f"{args.model} model, {args.articles} articles in batches of {args.batch_size}, "
        f"{args.beams} beams, max_length {args.max_length}, {args.dtype}"
    )

    config = model_shapes.bart_config(args.model)
    torch.manual_seed(args.seed)
    device = torch_baseline.device()
    torch_dtype = getattr(torch, args.dtype)
    torch_model = BartForConditionalGeneration(config).eval()
    with tempfile.TemporaryDirectory() as directory:
        torch_model.save_pretrained(directory)
        flax_model = FlaxBartForConditionalGeneration.from_pretrained(directory, args.dtype)
    torch_model = torch_model.to(device=device, dtype=torch_dtype)

    examples = synthetic_data.dacon_like_examples(args.articles, args.seed)
    articles = [example.input_ids for example in examples]  # <s> news </s>, as Summarizer makes
    texts = [" ".join(map(str, ids[1:-1])) for ids in articles]
    settings = flax_model.generation_settings(num_beams=args.beams, max_length=args.max_length)
    summarizer = Summarizer(
        flax_model.module,
        IdTokenizer(),
        settings,
        batch_size=args.batch_size,
        max_source_length=synthetic_data.MAX_SOURCE_LENGTH,
    )
    batches = torch_batches(articles, args.batch_size, device)

    def flax_summaries() -> list[str]:
        return summarizer.summarize(flax_model.params, texts)

    def torch_summaries() -> list[str]:
        summaries = [""] * len(articles)
        with torch.inference_mode():
            for rows, input_ids, attention_mask in batches:
                # Settings as transformers' defaults with the model's generation config
                # (forced </s> at max_length), which is what kobart-flax reads too.
                sequences = torch_model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    num_beams=args.beams,
                    max_length=args.max_length,
                    do_sample=False,
                )
                decoded = IdTokenizer().batch_decode(sequences.cpu().numpy())
                for row, summary in zip(rows, decoded, strict=True):
                    summaries[row] = summary
        return summaries

    # Warm-up: compiles kobart-flax's search once per source bucket; gives the token check.
    warmup_seconds = timing.timed(flax_summaries)
    flax_out, torch_out = flax_summaries(), torch_summaries()
    print(f"  kobart-flax warm-up (compile + first pass): {warmup_seconds:.1f} s")
    mismatches = sum(a != b for a, b in zip(flax_out, torch_out, strict=True))
    if mismatches:
        print(
            f"WARNING: {mismatches} of {len(texts)} summaries differ between kobart-flax and "
            "PyTorch (tests/test_generation.py checks equality on a tiny model; float ties "
            "between near-equal beams can flip here)"
        )
    else:
        print(f"  identical tokens: all {len(texts)} summaries equal PyTorch's")

    seconds = timing.alternate(
        {"kobart-flax": lambda _: flax_summaries(), "pytorch": lambda _: torch_summaries()},
        args.repeats,
    )
    rows = [
        {
            "framework": name,
            "turn s": timing.median(times),
            "summaries/s": timing.median([args.articles / t for t in times]),
            "turn times s": times,
        }
        for name, times in seconds.items()
    ]
    speedup = timing.paired_ratio(seconds["pytorch"], seconds["kobart-flax"])
    report.print_table(
        f"Beam-{args.beams} generation, medians of {args.repeats} alternating turns",
        rows,
        ["framework", "turn s", "summaries/s"],
    )
    print(
        f"\nkobart-flax / pytorch summaries/s (median of per-turn ratios): {speedup:.2f}x   "
        f"target >= 2x: {'met' if speedup >= 2 else 'NOT met'}"
    )
    report.write_json(
        args.json,
        env,
        {
            "model": args.model,
            "articles": args.articles,
            "batch_size": args.batch_size,
            "beams": args.beams,
            "max_length": args.max_length,
            "dtype": args.dtype,
            "summaries_differing": mismatches,
            "frameworks": rows,
            "speedup_summaries_per_s": speedup,
        },
    )


if __name__ == "__main__":
    main()
