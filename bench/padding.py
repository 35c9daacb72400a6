"""Padding efficiency and model FLOPs of an epoch: pad-to-512, length buckets, packed rows.

No timing: on Dacon-like lengths (``synthetic_data``, 34,242 examples as in the Dacon
training set), for each way of batching, the share of computed tokens that are real
(sources and summaries together) and the analytic model FLOPs of a training epoch
(``flops.train_flops``, attention over whole padded or packed rows), as a ratio to the
original pipeline, which padded every source and every decoder input to its max_len, 512
(as ``torch_baseline`` does).

    python -m bench.padding [--model base] [--examples 34242]
"""

import argparse
import sys
from pathlib import Path

# Also runnable as a file (python bench/padding.py): the repository root on the path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import flops, model_shapes, report, synthetic_data
from kobart_flax import packing

DACON_TRAIN_EXAMPLES = 34242
ORIGINAL_SHAPE = (512, 512)  # (source, target) every example is padded to
# (source, target) packed row shapes; 2048 / 256 is the shortest to reach 95% here.
PACKED_ROWS = ((1024, 128), (1024, 160), (1536, 192), (2048, 256))
# Global batches for bucketing: a CPU-sized one and configs/kobart_base.py's 16 x 32.
BUCKET_BATCHES = (8, 512)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("small", "base"), default="base")
    parser.add_argument("--examples", type=int, default=DACON_TRAIN_EXAMPLES)
    parser.add_argument("--seed", type=int, default=0)
    report.add_json_argument(parser)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    config = model_shapes.bart_config(args.model)
    examples = synthetic_data.dacon_like_examples(args.examples, args.seed)
    real = sum(len(e.input_ids) + len(e.labels) for e in examples)
    original_flops = flops.train_flops(config, len(examples), *ORIGINAL_SHAPE)

    def result(name: str, sequences: int, real_tokens: int, computed: int, cost: float) -> dict:
        return {
            "batching": name,
            "rows": sequences,
            "real / computed tokens": real_tokens / computed,
            "FLOPs vs pad-to-512": original_flops / cost,
        }

    rows = [
        result(
            "pad to 512 / 512 (original)",
            len(examples),
            real,
            len(examples) * sum(ORIGINAL_SHAPE),
            original_flops,
        )
    ]
    for batch_size in BUCKET_BATCHES:
        batches = synthetic_data.kobart_base_batches(examples, batch_size, args.seed)
        # The epoch's remainder (< one batch) is dropped: compare FLOPs per example.
        sequences, kept_real, computed, cost = 0, 0, 0, 0.0
        for batch in batches:
            size, source_len = batch["input_ids"].shape
            sequences += size
            kept_real += synthetic_data.real_tokens(batch)
            computed += synthetic_data.all_tokens(batch)
            cost += flops.train_flops(config, size, source_len, batch["labels"].shape[1])
        per_example_cost = cost / sequences * len(examples)
        rows.append(
            result(f"buckets, batch {batch_size}", sequences, kept_real, computed, per_example_cost)
        )
    for source_length, target_length in PACKED_ROWS:
        packed = packing.pack_examples(
            examples, seed=args.seed, source_length=source_length, target_length=target_length
        )
        rows.append(
            result(
                f"packed rows {source_length} / {target_length}",
                len(packed),
                real,
                len(packed) * (source_length + target_length),
                flops.train_flops(config, len(packed), source_length, target_length),
            )
        )

    report.print_table(
        f"{args.examples} Dacon-like examples, {args.model} model: one training epoch",
        rows,
        ["batching", "rows", "real / computed tokens", "FLOPs vs pad-to-512"],
    )
    report.write_json(args.json, report.environment(), {"model": args.model, "rows": rows})


if __name__ == "__main__":
    main()
