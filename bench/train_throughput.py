"""Training throughput: kobart-flax's train step against the original PyTorch pipeline.

Both train the same randomly initialised BART on the same synthetic Dacon-like examples,
batch for batch: kobart-flax pads each batch to its length buckets (configs/kobart_base.py),
or with ``--packing`` packs several examples per row (kobart_flax.packing); the PyTorch
baseline pads every example of that batch to 512 as the original did. The two take turns step
by step after a warm-up that compiles every batch shape used; the table gives medians.

    python -m bench.train_throughput                 # small model, CPU defaults
    python -m bench.train_throughput --model base    # kobart-base shapes, a few steps
    python -m bench.train_throughput --packing       # packed rows instead of buckets
"""

import argparse
import os
import sys
from pathlib import Path

# Also runnable as a file (python bench/train_throughput.py): the repository root on the path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# PyTorch's OpenMP threads otherwise spin-wait at every barrier: on a shared machine one
# descheduled thread then stalls every op, and the baseline runs 2-4x slower than it can
# (docs/PERFORMANCE.md, "Load"). Set before torch loads; OMP_WAIT_POLICY=ACTIVE overrides.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from bench import flax_training, model_shapes, report, synthetic_data, timing, torch_baseline
from kobart_flax import batching, packing

# (batch size, timed steps per framework) that keep a 2-core CPU run under 10 minutes.
CPU_DEFAULTS = {"small": (8, 8), "base": (2, 8)}
# The original padded sources and decoder inputs alike to its max_len.
MAX_LEN = synthetic_data.MAX_SOURCE_LENGTH


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("small", "base"), default="small")
    parser.add_argument(
        "--batch-size", type=int, help="rows per step, one example each unless packed"
    )
    parser.add_argument("--steps", type=int, help="timed steps per framework (default: per model)")
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="compute dtype: float32 on CPU, bfloat16 on accelerators",
    )
    parser.add_argument(
        "--packing", action="store_true", help="kobart-flax trains on packed rows, not buckets"
    )
    # 1024 / 160-token rows: on the Dacon-like lengths these need the fewest model FLOPs of
    # the row shapes tried (512/128: 1.97x fewer than pad-to-512, 1024/160: 2.15x,
    # 2048/320: 1.89x, as attention spans the whole row); see docs/PERFORMANCE.md.
    parser.add_argument("--packed-source-length", type=int, default=1024)
    parser.add_argument("--packed-target-length", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    report.add_json_argument(parser)
    args = parser.parse_args()
    default_batch, default_steps = CPU_DEFAULTS[args.model]
    args.batch_size = args.batch_size or default_batch
    args.steps = args.steps or default_steps
    return args


def bench_batches(args: argparse.Namespace) -> list[dict]:
    """The first ``args.steps`` batches of an epoch, as kobart-flax's loop would draw them.

    The data set spans two of batching's sort windows, so bucketed batches are as
    length-homogeneous as in the real job, not more, and packing has as many examples to
    choose from as its packing window.
    """
    examples = synthetic_data.dacon_like_examples(
        2 * batching.SORT_WINDOW_BATCHES * args.batch_size, args.seed
    )
    if args.packing:
        rows = packing.pack_examples(
            examples,
            seed=args.seed,
            source_length=args.packed_source_length,
            target_length=args.packed_target_length,
        )
        batches = packing.packed_batches(
            examples,
            rows,
            rows_per_batch=args.batch_size,
            seed=args.seed,
            epoch=0,
            source_length=args.packed_source_length,
            target_length=args.packed_target_length,
            pad_token_id=model_shapes.PAD,
            decoder_start_token_id=model_shapes.DECODER_START,
        )
        return [next(batches) for _ in range(args.steps)]
    batches = synthetic_data.kobart_base_batches(examples, args.batch_size, args.seed)
    return [next(batches) for _ in range(args.steps)]


def shape_of(batch: dict) -> tuple[int, int]:
    return batch["input_ids"].shape[1], batch["labels"].shape[1]


def main() -> None:
    args = parse_args()
    torch_baseline.use_all_cores()
    env = report.environment()
    report.print_environment(env)

    config = model_shapes.bart_config(args.model)
    batches = bench_batches(args)
    shapes = sorted({shape_of(batch) for batch in batches})
    examples = [torch_baseline.batch_examples(batch) for batch in batches]
    print(
        f"{args.model} model, {args.batch_size} {'packed ' if args.packing else ''}rows per "
        f"step, {args.steps} timed steps each; kobart-flax (source, target) shapes: {shapes}; "
        f"examples per step: {[len(e) for e in examples]}"
    )

    torch_trainer = torch_baseline.Trainer(config, 1 + args.steps, args.dtype, args.seed)
    torch_batches = [
        torch_baseline.pad_examples(step, MAX_LEN, MAX_LEN, model_shapes.PAD, torch_trainer.device)
        for step in examples
    ]
    flax_trainer = flax_training.Trainer(config, len(shapes) + args.steps, args.dtype, args.seed)

    # Warm-up: compile every shape the timed steps use; let torch allocate its optimizer state.
    for shape in shapes:
        first = next(batch for batch in batches if shape_of(batch) == shape)
        compile_seconds = timing.timed(lambda first=first: flax_trainer.step(first))
        print(f"  kobart-flax compile + first step for {shape}: {compile_seconds:.1f} s")
    torch_trainer.step(torch_batches[0])

    seconds = timing.alternate(
        {
            "kobart-flax": lambda i: flax_trainer.step(batches[i]),
            "pytorch": lambda i: torch_trainer.step(torch_batches[i]),
        },
        args.steps,
    )

    real = [synthetic_data.real_tokens(batch) for batch in batches]
    computed = {
        "kobart-flax": [synthetic_data.all_tokens(batch) for batch in batches],
        "pytorch": [
            batch["input_ids"].numel() + batch["decoder_input_ids"].numel()
            for batch in torch_batches
        ],
    }
    rows = []
    for name, times in seconds.items():
        rows.append(
            {
                "framework": name,
                "padding efficiency": sum(real) / sum(computed[name]),
                "step s": timing.median(times),
                "useful tokens/s": timing.median([r / t for r, t in zip(real, times, strict=True)]),
                "examples/s": timing.median(
                    [len(step) / t for step, t in zip(examples, times, strict=True)]
                ),
                "step times s": times,
            }
        )
    speedup = timing.paired_ratio(seconds["pytorch"], seconds["kobart-flax"])
    columns = ["framework", "padding efficiency", "step s", "useful tokens/s", "examples/s"]
    report.print_table(
        f"Training, {args.model} model, {args.dtype}, "
        f"{'packed' if args.packing else 'bucketed'} kobart-flax batches, "
        f"medians of {args.steps} alternating steps",
        rows,
        columns,
    )
    print(
        f"\nkobart-flax / pytorch useful tokens/s (median of per-step ratios on the same "
        f"batches): {speedup:.2f}x   target >= 2x: {'met' if speedup >= 2 else 'NOT met'}"
    )
    report.write_json(
        args.json,
        env,
        {
            "model": args.model,
            "batch_size": args.batch_size,
            "packing": args.packing,
            "packed_row": (
                (args.packed_source_length, args.packed_target_length) if args.packing else None
            ),
            "examples_per_step": [len(step) for step in examples],
            "steps": args.steps,
            "dtype": args.dtype,
            "shapes": shapes,
            "frameworks": rows,
            "speedup_useful_tokens_per_s": speedup,
        },
    )


if __name__ == "__main__":
    main()
