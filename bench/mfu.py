"""Model FLOPs utilization of kobart-flax's train step, with the PyTorch baseline beside it.

MFU = model FLOPs per second of the train step / FLOP/s of a large matrix multiply measured
in the same run on the same device. Both frameworks train on the same batch at one fixed
padded shape (by default (512, 128), the shape most bucketed batches of the Dacon-like data
get), so this isolates how well each uses the hardware from how much padding each computes.
Model FLOPs are counted analytically (bench/flops.py) and, for kobart-flax, also read from
XLA's cost analysis of the compiled step.

    python -m bench.mfu                  # small model, float32, CPU
    python -m bench.mfu --model base
    python -m bench.mfu --model base --dtype bfloat16 --batch-size 32 --matmul-size 8192  # GPU
"""

import argparse
import os
import sys
from pathlib import Path

# Also runnable as a file (python bench/mfu.py): the repository root on the path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# PyTorch's OpenMP threads otherwise spin-wait at every barrier: on a shared machine one
# descheduled thread then stalls every op, and the baseline runs 2-4x slower than it can
# (docs/PERFORMANCE.md, "Load"). Set before torch loads; OMP_WAIT_POLICY=ACTIVE overrides.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from bench import flax_training, flops, model_shapes, report, synthetic_data, timing, torch_baseline
from kobart_flax import batching

CPU_DEFAULTS = {"small": (8, 5), "base": (2, 3)}  # (batch size, timed steps) for a 2-core CPU


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("small", "base"), default="small")
    parser.add_argument("--batch-size", type=int, help="examples per step (default: per model)")
    parser.add_argument("--steps", type=int, help="timed steps per framework (default: per model)")
    parser.add_argument("--source-length", type=int, default=512)
    parser.add_argument("--target-length", type=int, default=128)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument(
        "--matmul-size", type=int, default=4096, help="side of the square matmul (peak FLOP/s)"
    )
    parser.add_argument("--seed", type=int, default=0)
    report.add_json_argument(parser)
    args = parser.parse_args()
    default_batch, default_steps = CPU_DEFAULTS[args.model]
    args.batch_size = args.batch_size or default_batch
    args.steps = args.steps or default_steps
    return args


def fixed_shape_batch(batch_size: int, source_len: int, target_len: int, seed: int) -> dict:
    """One batch of Dacon-like examples, every row padded to (source_len, target_len)."""
    examples = synthetic_data.dacon_like_examples(batch_size, seed)
    return next(
        batching.train_batches(
            examples,
            batch_size=batch_size,
            seed=seed,
            epoch=0,
            source_buckets=(source_len,),
            target_buckets=(target_len,),
            pad_token_id=model_shapes.PAD,
            decoder_start_token_id=model_shapes.DECODER_START,
        )
    )


def main() -> None:
    args = parse_args()
    torch_baseline.use_all_cores()
    env = report.environment()
    report.print_environment(env)
    config = model_shapes.bart_config(args.model)
    shape = (args.batch_size, args.source_length, args.target_length)
    print(f"{args.model} model, {args.dtype}, step shape (batch, source, target) = {shape}")

    batch = fixed_shape_batch(*shape, args.seed)
    flax_trainer = flax_training.Trainer(config, 1 + args.steps, args.dtype, args.seed)
    torch_trainer = torch_baseline.Trainer(config, 1 + args.steps, args.dtype, args.seed)
    torch_batch = torch_baseline.pad_examples(
        torch_baseline.batch_examples(batch), *shape[1:], model_shapes.PAD, torch_trainer.device
    )
    xla_step_flops = flops.xla_flops(flax_trainer.cost_analysis(batch))
    flax_trainer.step(batch)  # compile
    torch_trainer.step(torch_batch)
    jax_matmul = flops.jax_matmul(args.matmul_size, args.dtype)
    torch_matmul = flops.torch_matmul(args.matmul_size, args.dtype, torch_trainer.device)

    # The matmuls take turns with the steps, so each turn's peak saw that turn's machine load.
    seconds = timing.alternate(
        {
            "jax matmul": lambda _: jax_matmul(),
            "torch matmul": lambda _: torch_matmul(),
            "kobart-flax": lambda _: flax_trainer.step(batch),
            "pytorch": lambda _: torch_trainer.step(torch_batch),
        },
        args.steps,
    )
    matmul_flops = flops.matmul_flops(args.matmul_size)
    peaks = [
        matmul_flops / min(jax_s, torch_s)
        for jax_s, torch_s in zip(seconds["jax matmul"], seconds["torch matmul"], strict=True)
    ]
    model_flops = flops.train_flops(config, *shape)
    counted = {"kobart-flax": xla_step_flops}
    rows = []
    for name in ("kobart-flax", "pytorch"):
        times = seconds[name]
        row = {
            "framework": name,
            "step s": timing.median(times),
            "model TFLOP/step": model_flops / 1e12,
            "model GFLOP/s": timing.median([model_flops / t / 1e9 for t in times]),
            "MFU": timing.median(
                [model_flops / t / peak for t, peak in zip(times, peaks, strict=True)]
            ),
            "step times s": times,
        }
        if name in counted:
            row["XLA TFLOP/step"] = counted[name] / 1e12
            row["MFU (XLA FLOPs)"] = timing.median(
                [counted[name] / t / peak for t, peak in zip(times, peaks, strict=True)]
            )
        rows.append(row)

    matmul_rates = {
        name: timing.median([matmul_flops / t for t in seconds[f"{name} matmul"]])
        for name in ("jax", "torch")
    }
    print(
        f"\n{args.matmul_size}x{args.matmul_size} {args.dtype} matmul, medians: jax "
        f"{matmul_rates['jax'] / 1e9:.1f} GFLOP/s, torch {matmul_rates['torch'] / 1e9:.1f} "
        f"GFLOP/s; each turn's peak = the faster of its two"
    )
    report.print_table(
        f"Train step utilization, medians of {args.steps} alternating turns",
        rows,
        [
            "framework",
            "step s",
            "model TFLOP/step",
            "XLA TFLOP/step",
            "model GFLOP/s",
            "MFU",
            "MFU (XLA FLOPs)",
        ],
    )
    speedup = timing.paired_ratio(seconds["pytorch"], seconds["kobart-flax"])
    print(f"\nkobart-flax / pytorch at the same padded shape: {speedup:.2f}x")
    report.write_json(
        args.json,
        env,
        {
            "model": args.model,
            "dtype": args.dtype,
            "shape": shape,
            "matmul_size": args.matmul_size,
            "matmul_flops_per_s": matmul_rates,
            "peak_flops_per_s_by_turn": peaks,
            "model_flops_per_step": model_flops,
            "xla_flops_per_step": xla_step_flops,
            "frameworks": rows,
            "speedup_same_shape": speedup,
        },
    )


if __name__ == "__main__":
    main()
