"""Start-up with and without JAX's persistent compilation cache (kobart_flax.compile_cache).

Two restarts that compile what an earlier process compiled already:

- a resumed tiny run (configs/tiny.py): process start to its first train step after the
  checkpoint, each time from a fresh copy of a run stopped at step 2;
- a second ``predict.py`` on the final model of that run: process start to exit, for 16
  articles.

Each is timed with the cache off (``none``: every program compiles) and warm (a directory an
earlier process filled), in turns, ``--repeats`` times; the table gives the medians.

    python -m bench.compile_cache_startup [--repeats 3]
"""

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Also runnable as a file (python bench/compile_cache_startup.py): the repository root first.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import report

REPO = Path(__file__).resolve().parents[1]
STOPPED_AT = 2  # the run that every resume continues
ARTICLES = 16
TRAIN_ARGS = (
    "--config",
    "configs/tiny.py",
    "train.log_every=1",
    "train.eval_every=0",
    "train.eval_max_batches=1",
    "train.rouge_every=0",
    "train.checkpoint_every=0",
    "train.keep_best=0",
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    report.add_json_argument(parser)
    return parser.parse_args()


def train(workdir: Path, max_steps: int, cache: str, stop_at: str | None = None) -> float:
    """Seconds from process start to ``stop_at`` in its log (then killed), or to its exit."""
    command = [
        sys.executable,
        "train_flax.py",
        *TRAIN_ARGS,
        f"train.workdir={workdir}",
        f"train.max_steps={max_steps}",
        f"train.compile_cache_dir={cache}",
    ]
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    tail = []
    for line in process.stderr:
        tail = [*tail[-20:], line]
        if stop_at is not None and stop_at in line:
            elapsed = time.perf_counter() - started
            process.kill()
            process.wait()
            return elapsed
    if process.wait() != 0 or stop_at is not None:
        raise RuntimeError(f"train_flax.py exited {process.returncode}:\n{''.join(tail)}")
    return time.perf_counter() - started


def predict(model: Path, articles: Path, output: Path, cache: str) -> float:
    command = [
        sys.executable,
        "predict.py",
        "--model",
        str(model),
        "--input",
        str(articles),
        "--output",
        str(output),
        "--tokenization",
        "character",
        "--compile-cache",
        cache,
    ]
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    args = parse_args()
    results: dict[str, list[float]] = {
        "resumed run, cache off": [],
        "resumed run, cache warm": [],
        "second predict.py, cache off": [],
        "second predict.py, cache warm": [],
    }
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        base, warm = scratch / "base", str(scratch / "compile_cache")
        seconds = train(base, STOPPED_AT, warm)
        print(f"run to step {STOPPED_AT}, filling the cache: {seconds:.1f} s", flush=True)
        lines = (REPO / "data" / "sample" / "test.tsv").read_text(encoding="utf-8").splitlines()
        articles = scratch / "articles.tsv"
        articles.write_text("\n".join(lines[: ARTICLES + 1]) + "\n", encoding="utf-8")
        model = base / "final_model"
        predict(model, articles, scratch / "first.tsv", warm)  # the first predict.py fills it
        for repeat in range(args.repeats):
            for cache, name in (("none", "cache off"), (warm, "cache warm")):
                workdir = scratch / f"resume_{repeat}_{name.replace(' ', '_')}"
                shutil.copytree(base, workdir)
                seconds = train(workdir, STOPPED_AT + 1, cache, stop_at=f"step {STOPPED_AT + 1}/")
                results[f"resumed run, {name}"].append(seconds)
                output = scratch / f"predict_{repeat}_{name.replace(' ', '_')}.tsv"
                seconds = predict(model, articles, output, cache)
                results[f"second predict.py, {name}"].append(seconds)
                same = output.read_text(encoding="utf-8") == (scratch / "first.tsv").read_text(
                    encoding="utf-8"
                )
                if not same:
                    raise RuntimeError(f"{output}: summaries differ from the first predict.py")
                print(
                    f"repeat {repeat}, {name}: resumed {results[f'resumed run, {name}'][-1]:.1f} "
                    f"s, predict {seconds:.1f} s",
                    flush=True,
                )
    env = report.environment()
    report.print_environment(env)
    rows = [
        {"start-up": name, "median s": statistics.median(times), "runs": len(times)}
        for name, times in results.items()
    ]
    report.print_table(
        "process start to the first step after resuming / to predict.py's exit", rows, list(rows[0])
    )
    report.write_json(args.json, env, results)


if __name__ == "__main__":
    main()
