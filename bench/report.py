"""What every benchmark prints and writes: a table, the machine and versions, JSON."""

import argparse
import datetime
import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ("jax", "jaxlib", "flax", "optax", "torch", "transformers")


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")


def cpu_model() -> str:
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def usable_cores() -> int:
    """Cores this process may run on (affinity), what both XLA and the torch threads get."""
    return len(os.sched_getaffinity(0))


def environment() -> dict:
    import jax
    import torch

    device = jax.devices()[0]
    return {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu_model(),
        "cores": usable_cores(),
        "jax_device": f"{device.platform}: {device.device_kind}",
        "jax_devices": jax.device_count(),
        "torch_device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)"),
        "python": platform.python_version(),
        **{name: metadata.version(name) for name in PACKAGES},
    }


def print_table(title: str, rows: list[dict], columns: list[str]) -> None:
    """Rows of dicts as fixed-width text; floats get 4 significant digits."""

    def cell(value) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    cells = [[cell(row.get(column, "")) for column in columns] for row in rows]
    widths = [
        max(len(text) for text in [column, *(line[index] for line in cells)])
        for index, column in enumerate(columns)
    ]
    print(f"\n{title}")
    print("  ".join(column.rjust(width) for column, width in zip(columns, widths, strict=True)))
    for line in cells:
        print("  ".join(text.rjust(width) for text, width in zip(line, widths, strict=True)))


def print_environment(env: dict) -> None:
    print(
        f"{env['date']}  {env['cpu']} ({env['cores']} cores)  jax device {env['jax_device']}  "
        f"torch {env['torch_device']} ({env['torch_threads']} threads, "
        f"OMP_WAIT_POLICY={env['omp_wait_policy']})"
    )
    print("  ".join(f"{name} {env[name]}" for name in PACKAGES))


def command() -> str:
    """This run's command line, in its ``python -m bench.NAME`` form."""
    return " ".join(["python", "-m", f"bench.{Path(sys.argv[0]).stem}", *sys.argv[1:]])


def write_json(path: Path | None, env: dict, results: dict) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"command": command(), "environment": env, "results": results}
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    print(f"\nwrote {path}")
