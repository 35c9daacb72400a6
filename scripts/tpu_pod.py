"""Train on a Cloud TPU VM pod (default v4-32: 4 workers x 4 chips) with gcloud.

    python -m scripts.tpu_pod --name kobart --zone us-central2-b run -- \\
        train.workdir=gs://BUCKET/kobart_base
    python -m scripts.tpu_pod --name kobart --zone us-central2-b --dry-run run -- ...

Actions (each prints the commands it runs; ``--dry-run`` only prints them):

- ``create``: create the TPU VM, or reuse it when ``describe`` finds it.
- ``setup``: pack this checkout's code (git-tracked and untracked, not ignored) and the data
  files, copy both to every worker, install ``requirements-tpu.txt`` into ``.venv`` there.
- ``train``: run ``train_flax.py --config CONFIG ARGS`` on every worker at once, each logging
  to ``~/kobart-flax/logs/train.log``; with ``--detach`` it keeps running after ssh returns.
- ``logs``: copy every worker's log to ``--log-dir/worker_<i>.log``.
- ``stop``: stop training on every worker (a SIGTERM: the run checkpoints, then exits).
- ``delete``: delete the TPU VM.
- ``run``: create, setup, train, logs.

Rerunning ``train`` with the same ``train.workdir`` resumes from its newest checkpoint; keep
the workdir on ``gs://`` so it outlives the VM.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REMOTE_DIR = "~/kobart-flax"
REMOTE_ARCHIVE = "~/kobart-flax.tar.gz"
REMOTE_LOG = f"{REMOTE_DIR}/logs/train.log"
# What a worker needs to train, export and predict; tests, benchmarks and docs stay home.
CODE_PATHS = (
    "kobart_flax",
    "configs",
    "scripts",
    "data/sample",
    "train_flax.py",
    "export_pt.py",
    "predict.py",
    "requirements.txt",
    "requirements-tpu.txt",
    "pyproject.toml",
)
# v2/v3/v4 accelerator types count TensorCores: 2 per chip, 4 chips per worker.
CORES_PER_WORKER = 8
ACTIONS = ("create", "setup", "train", "logs", "stop", "delete", "run")


@dataclasses.dataclass(frozen=True)
class Command:
    argv: list[str]
    why: str
    # Run only if the previous command failed (create after a failed describe).
    unless_previous_succeeded: bool = False


@dataclasses.dataclass(frozen=True)
class Pod:
    name: str
    zone: str
    project: str | None
    accelerator_type: str
    version: str
    spot: bool
    workers: int

    def gcloud(self, verb: str, *args: str) -> list[str]:
        """``gcloud compute tpus tpu-vm VERB ARGS --zone=Z [--project=P]``."""
        argv = ["gcloud", "compute", "tpus", "tpu-vm", verb, *args, f"--zone={self.zone}"]
        return argv + ([f"--project={self.project}"] if self.project else [])

    def on_all_workers(self, command: str) -> list[str]:
        return self.gcloud("ssh", self.name, "--worker=all", f"--command={command}")


def workers_of(accelerator_type: str) -> int:
    """Hosts of a v2/v3/v4 pod slice: v4-32 (32 TensorCores) has 4."""
    match = re.fullmatch(r"v[234]-(\d+)", accelerator_type)
    if not match:
        raise ValueError(f"cannot tell the worker count of {accelerator_type!r}: pass --workers")
    return max(1, int(match.group(1)) // CORES_PER_WORKER)


def create_commands(pod: Pod) -> list[Command]:
    create = pod.gcloud(
        "create",
        pod.name,
        f"--accelerator-type={pod.accelerator_type}",
        f"--version={pod.version}",
    ) + (["--spot"] if pod.spot else [])
    return [
        Command(pod.gcloud("describe", pod.name, "--format=value(state)"), "reuse it if it exists"),
        Command(create, "create the TPU VM", unless_previous_succeeded=True),
    ]


def setup_commands(pod: Pod, archive: Path, data_files: list[str]) -> list[Command]:
    pack = (
        "git ls-files -z --cached --others --exclude-standard -- "
        + " ".join(CODE_PATHS)
        + f" | tar --null --files-from=- -czf {shlex.quote(str(archive))}"
    )
    install = (
        f"mkdir -p {REMOTE_DIR} && tar -xzf {REMOTE_ARCHIVE} -C {REMOTE_DIR} && "
        f"cd {REMOTE_DIR} && scripts/setup_env.sh requirements-tpu.txt"
    )
    commands = [
        Command(["bash", "-o", "pipefail", "-c", pack], "pack the code"),
        Command(
            pod.gcloud("scp", str(archive), f"{pod.name}:{REMOTE_ARCHIVE}", "--worker=all"),
            "copy the code to every worker",
        ),
        Command(pod.on_all_workers(install), "unpack and install requirements-tpu.txt"),
    ]
    if data_files:
        commands.append(
            Command(
                pod.gcloud("scp", *data_files, f"{pod.name}:{REMOTE_DIR}/data/", "--worker=all"),
                "copy the data to every worker",
            )
        )
    return commands


def train_command(pod: Pod, config: str, train_args: list[str], detach: bool) -> Command:
    train = shlex.join([".venv/bin/python", "train_flax.py", "--config", config, *train_args])
    prepare = f"cd {REMOTE_DIR} && mkdir -p logs && "
    if detach:
        # setsid + nohup: the run survives the ssh session; the log is all that talks.
        remote = prepare + f"setsid nohup {train} > logs/train.log 2>&1 < /dev/null &"
    else:
        # pipefail: a failed run fails the ssh command, not just tee.
        remote = prepare + f"set -o pipefail && {train} 2>&1 | tee logs/train.log"
    return Command(pod.on_all_workers(remote), "train on every worker")


def logs_commands(pod: Pod, log_dir: Path) -> list[Command]:
    return [
        Command(
            pod.gcloud(
                "scp",
                f"{pod.name}:{REMOTE_LOG}",
                str(log_dir / f"worker_{worker}.log"),
                f"--worker={worker}",
            ),
            f"fetch worker {worker}'s log",
        )
        for worker in range(pod.workers)
    ]


def stop_command(pod: Pod) -> Command:
    # [t]: the pattern must not match the remote shell running this very pkill.
    return Command(pod.on_all_workers("pkill -TERM -f '[t]rain_flax.py' || true"), "stop training")


def delete_command(pod: Pod) -> Command:
    return Command(pod.gcloud("delete", pod.name, "--quiet"), "delete the TPU VM")


def plan(action: str, pod: Pod, args: argparse.Namespace) -> list[Command]:
    """The commands of one action other than ``run``."""
    if action == "create":
        return create_commands(pod)
    if action == "setup":
        return setup_commands(pod, args.archive, args.data)
    if action == "train":
        return [train_command(pod, args.config, args.train_args, args.detach)]
    if action == "logs":
        return logs_commands(pod, args.log_dir)
    if action == "stop":
        return [stop_command(pod)]
    return [delete_command(pod)]


def execute(commands: list[Command], dry_run: bool) -> int:
    """Runs (or prints) the commands in order; stops at the first failure."""
    previous_ok = False
    for index, command in enumerate(commands):
        if dry_run:
            fallback = command.unless_previous_succeeded
            print(f"# {command.why}" + "  (only if the previous command failed)" * fallback)
            print(shlex.join(command.argv))
            continue
        if command.unless_previous_succeeded and previous_ok:
            continue
        print(f"# {command.why}\n{shlex.join(command.argv)}", flush=True)
        returncode = subprocess.run(command.argv, cwd=REPO, check=False).returncode
        previous_ok = returncode == 0
        # A failure that the next command handles (describe -> create) is not an error.
        has_fallback = index + 1 < len(commands) and commands[index + 1].unless_previous_succeeded
        if returncode != 0 and not has_fallback:
            print(f"FAILED (exit {returncode}): {command.why}", file=sys.stderr)
            return returncode
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("action", choices=ACTIONS)
    parser.add_argument("--name", required=True, help="TPU VM name")
    parser.add_argument("--zone", required=True, help="e.g. us-central2-b (v4)")
    parser.add_argument("--project", help="GCP project (default: gcloud's)")
    parser.add_argument("--accelerator-type", default="v4-32")
    parser.add_argument("--version", default="tpu-ubuntu2204-base", help="TPU VM software")
    parser.add_argument("--spot", action="store_true", help="a Spot VM: cheaper, preemptible")
    parser.add_argument("--workers", type=int, help="hosts (default: from the accelerator type)")
    parser.add_argument("--config", default="configs/kobart_base.py")
    parser.add_argument(
        "--data",
        nargs="*",
        default=["data/train.tsv", "data/test.tsv"],
        help="files copied to data/ on every worker (none with gs:// data paths)",
    )
    parser.add_argument("--archive", type=Path, default=Path("/tmp/kobart-flax.tar.gz"))
    parser.add_argument("--log-dir", type=Path, default=Path("runs/pod_logs"))
    parser.add_argument("--detach", action="store_true", help="train: return once started")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser.add_argument(
        "train_args", nargs="*", metavar="section.field=value", help="train_flax.py overrides"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pod = Pod(
        name=args.name,
        zone=args.zone,
        project=args.project,
        accelerator_type=args.accelerator_type,
        version=args.version,
        spot=args.spot,
        workers=args.workers or workers_of(args.accelerator_type),
    )
    if args.action in ("logs", "run") and not args.dry_run:
        args.log_dir.mkdir(parents=True, exist_ok=True)
    if args.action != "run":
        return execute(plan(args.action, pod, args), args.dry_run)
    args.detach = False  # run waits for training, then fetches the logs
    steps = ("create", "setup", "train")
    returncode = execute([c for step in steps for c in plan(step, pod, args)], args.dry_run)
    # The logs matter most when training failed.
    return returncode or execute(plan("logs", pod, args), args.dry_run)


if __name__ == "__main__":
    sys.exit(main())
