"""Start-up of train_flax.py (process start to the first train step), with and without the
tokenization cache, on Dacon-sized Korean data.

The data: 34,242 training rows (Dacon's count) built from the bundled Korean sample by
joining four sample articles per row (about Dacon's article length in characters) with a
row number, so every row is distinct. Three runs of the tiny config, one step each, in turn:
the cache off, the cache cold (tokenize and write it) and the cache warm (read it), repeated
``--repeats`` times; the table gives the median seconds of each.

    python -m bench.startup [--rows 34242] [--repeats 2]
"""

import argparse
import csv
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Also runnable as a file (python bench/startup.py): the repository root on the path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import report
from kobart_flax.data_io import read_examples

REPO = Path(__file__).resolve().parents[1]
DACON_TRAIN_EXAMPLES = 34242
ARTICLES_PER_ROW = 4
FIRST_STEP = "step 1/"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=DACON_TRAIN_EXAMPLES)
    parser.add_argument("--repeats", type=int, default=2)
    report.add_json_argument(parser)
    return parser.parse_args()


def write_rows(path: Path, rows: int) -> None:
    sample = read_examples(str(REPO / "data" / "sample" / "train.tsv"))
    with open(path, "w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file, delimiter="\t", lineterminator="\n")
        writer.writerow(("news", "summary"))
        for row in range(rows):
            parts = [sample[(row + k) % len(sample)].news for k in range(ARTICLES_PER_ROW)]
            writer.writerow(
                (f"{row}번 기사. " + " ".join(parts), sample[row % len(sample)].summary)
            )


def seconds_to_first_step(data: Path, workdir: Path, cache: Path, *extra: str) -> float:
    command = [
        sys.executable,
        "train_flax.py",
        "--config",
        "configs/tiny.py",
        f"data.train_path={data}",
        f"data.eval_path={REPO / 'data' / 'sample' / 'test.tsv'}",
        f"train.workdir={workdir}",
        f"data.cache_dir={cache}",
        "train.max_steps=1",
        "train.log_every=1",
        "train.eval_every=0",
        "train.rouge_every=0",
        "train.checkpoint_every=0",
        *extra,
    ]
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    for line in process.stderr:
        if FIRST_STEP in line:
            elapsed = time.perf_counter() - started
            process.kill()
            process.wait()
            return elapsed
    process.wait()
    raise RuntimeError(f"train_flax.py exited {process.returncode} before its first step")


def main() -> None:
    args = parse_args()
    results: dict[str, list[float]] = {"cache off": [], "cache cold": [], "cache warm": []}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        data = scratch / "train.tsv"
        write_rows(data, args.rows)
        print(f"{args.rows:,} rows, {data.stat().st_size / 2**20:.0f} MiB", flush=True)
        for repeat in range(args.repeats):
            cache = scratch / f"cache{repeat}"
            runs = (
                ("cache off", ("data.token_cache=false",)),
                ("cache cold", ()),
                ("cache warm", ()),
            )
            for name, extra in runs:
                workdir = scratch / f"run_{repeat}_{name.replace(' ', '_')}"
                seconds = seconds_to_first_step(data, workdir, cache, *extra)
                results[name].append(seconds)
                print(f"repeat {repeat}: {name}: {seconds:.1f} s", flush=True)
    env = report.environment()
    report.print_environment(env)
    rows = [
        {"start-up": name, "median s to step 1": statistics.median(times), "runs": len(times)}
        for name, times in results.items()
    ]
    report.print_table("process start to the first train step", rows, list(rows[0]))
    report.write_json(args.json, env, results)


if __name__ == "__main__":
    main()
