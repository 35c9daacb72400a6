"""XLA compilations over a 200-step training run: one per batch shape, none after that.

Runs kobart-flax's train step as the training loop does (bench/flax_training.py: the state
created sharded, the step jitted with shardings and donation, batches from
``batching.train_batches`` through ``prefetch`` and ``sharding.global_batch``) on
Dacon-like examples bucketed with configs/kobart_base.py's buckets. Every backend
compilation in the process is counted through ``jax.monitoring``, whatever triggers it,
alongside the train step's own jit cache size.

    python -m bench.compilations                    # tiny model: the count depends on shapes only
    python -m bench.compilations --model small --steps 200
"""

import argparse
import sys
from collections import Counter
from pathlib import Path

# Also runnable as a file (python bench/compilations.py): the repository root on the path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax

from bench import flax_training, model_shapes, report, synthetic_data
from kobart_flax import batching

BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class CompileCounter:
    """Counts backend compilations (and who asked for them) from jax's monitoring events."""

    def __init__(self) -> None:
        self.functions: list[str] = []
        jax.monitoring.register_event_duration_secs_listener(self._on_event)

    def _on_event(self, event: str, duration: float, **kwargs) -> None:
        if event == BACKEND_COMPILE_EVENT:
            self.functions.append(kwargs.get("fun_name", "?"))

    @property
    def count(self) -> int:
        return len(self.functions)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=tuple(model_shapes.SHAPES), default="tiny")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    report.add_json_argument(parser)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    env = report.environment()
    report.print_environment(env)
    counter = CompileCounter()
    trainer = flax_training.Trainer(
        model_shapes.bart_config(args.model), args.steps, "float32", args.seed
    )
    # One epoch of exactly ``steps`` batches.
    examples = synthetic_data.dacon_like_examples(args.steps * args.batch_size, args.seed)
    batches = synthetic_data.kobart_base_batches(examples, args.batch_size, args.seed)

    setup_compiles = counter.count
    seen: set[tuple[int, int]] = set()
    steps = []  # per step: shape, whether it was new, compilations during the step
    for batch in batching.prefetch(batches, 2):
        shape = (batch["input_ids"].shape[1], batch["labels"].shape[1])
        before = counter.count
        trainer.step(batch)
        steps.append((shape, shape not in seen, counter.count - before))
        seen.add(shape)

    loop_compiles = counter.count - setup_compiles
    last_new_step = max(index for index, (_, new, _) in enumerate(steps) if new)
    steady_compiles = sum(compiles for _, _, compiles in steps[last_new_step + 1 :])
    on_seen_shapes = sum(compiles for _, new, compiles in steps if not new)
    shape_counts = Counter(shape for shape, _, _ in steps)
    results = {
        "model": args.model,
        "batch_size": args.batch_size,
        "steps": len(steps),
        "distinct_shapes": len(shape_counts),
        "steps_per_shape": {f"{s}x{t}": n for (s, t), n in sorted(shape_counts.items())},
        "setup_compilations": setup_compiles,
        "loop_compilations": loop_compiles,
        "loop_compiled_functions": dict(Counter(counter.functions[setup_compiles:])),
        "train_step_cache_size": trainer.jitted_step._cache_size(),
        "last_new_shape_at_step": last_new_step + 1,
        "compilations_after_last_new_shape": steady_compiles,
        "compilations_on_seen_shapes": on_seen_shapes,
    }
    ok = loop_compiles == len(shape_counts) and on_seen_shapes == 0
    report.print_table(
        f"Compilations over {len(steps)} train steps ({args.model} model, batch {args.batch_size})",
        [
            {"what": "distinct (source, target) batch shapes", "value": len(shape_counts)},
            {"what": "XLA compilations during the loop", "value": loop_compiles},
            {"what": "train_step jit cache entries", "value": results["train_step_cache_size"]},
            {"what": "compilations on already-seen shapes", "value": on_seen_shapes},
            {
                "what": f"compilations after step {last_new_step + 1} (last new shape)",
                "value": steady_compiles,
            },
            {"what": "compilations before the loop (state init)", "value": setup_compiles},
        ],
        ["what", "value"],
    )
    print(f"\nsteps per shape: {results['steps_per_shape']}")
    print(f"compiled in the loop: {results['loop_compiled_functions']}")
    print(f"\none compilation per shape, none in steady state: {'yes' if ok else 'NO'}")
    report.write_json(args.json, env, results)


if __name__ == "__main__":
    main()
