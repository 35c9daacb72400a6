"""Train on a Cloud TPU VM pod (default v4-32: 4 workers x 4 chips) with gcloud.

    python -m scripts.tpu_pod --name kobart --zone us-central2-b run -- \\
        train.workdir=gs://BUCKET/kobart_base
    python -m scripts.tpu_pod --name kobart --zone us-central2-b --spot --queued \\
        run --until-done -- train.workdir=gs://BUCKET/kobart_base
    python -m scripts.tpu_pod --name kobart --zone us-central2-b --dry-run run -- ...

Actions (each prints the commands it runs; ``--dry-run`` only prints them):

- ``create``: make sure a READY TPU VM exists: reuse a READY one, wait for one being created,
  delete and recreate a PREEMPTED (or otherwise unusable) one, create a missing one. With
  ``--queued`` the VM is requested as a queued resource (Google's route to Spot v4 capacity)
  and ``create`` waits until the request is ACTIVE.
- ``setup``: pack this checkout's code (git-tracked and untracked, not ignored) and the data
  files, copy both to every worker, install ``requirements-tpu.txt`` into ``.venv`` there.
- ``train``: run ``train_flax.py --config CONFIG ARGS`` on every worker at once, each logging
  to ``~/kobart-flax/logs/train.log``; with ``--detach`` it keeps running after ssh returns
  and each start appends to the log under a timestamped header.
- ``logs``: copy every worker's log to ``--log-dir/worker_<i>.log``.
- ``stop``: stop training on every worker (a SIGTERM: the run checkpoints, then exits).
- ``delete``: delete the TPU VM (with ``--queued``: its queued resource too).
- ``run``: create, setup, train, logs. With ``--until-done``, a training command that ends
  with the VM no longer READY (preempted) is followed by create (which recreates the VM),
  setup and the same training command, up to ``--max-attempts`` times.

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
import time
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
# `tpu-vm describe --format=value(state)`: READY is usable, CREATING will be; any other state
# (PREEMPTED, TERMINATED, STOPPED, REPAIRING, ...) is replaced rather than waited for.
VM_READY = "READY"
# train_flax.EXIT_PREEMPTED (not imported: the launcher runs where JAX is not installed).
TRAINING_PREEMPTED_EXIT = 75
VM_IN_PROGRESS = ("CREATING",)
# `queued-resources describe --format=value(state.state)`: the request is still on its way
# in these states; SUSPENDED (its Spot VM was preempted), FAILED and the rest are replaced.
QUEUED_READY = "ACTIVE"
QUEUED_IN_PROGRESS = ("CREATING", "ACCEPTED", "PROVISIONING", "WAITING_FOR_RESOURCES")


class LaunchError(Exception):
    """A step that cannot go on; main prints it as one line."""


@dataclasses.dataclass(frozen=True)
class Command:
    argv: list[str]
    why: str
    # Printed by --dry-run only: the command runs only if the previous one failed.
    unless_previous_succeeded: bool = False


@dataclasses.dataclass(frozen=True)
class Pod:
    name: str
    zone: str
    project: str | None
    accelerator_type: str
    version: str
    spot: bool
    queued: bool
    workers: int

    def gcloud(self, verb: str, *args: str, group: str = "tpu-vm") -> list[str]:
        """``gcloud compute tpus GROUP VERB ARGS --zone=Z [--project=P]``."""
        argv = ["gcloud", "compute", "tpus", group, verb, *args, f"--zone={self.zone}"]
        return argv + ([f"--project={self.project}"] if self.project else [])

    def on_all_workers(self, command: str) -> list[str]:
        return self.gcloud("ssh", self.name, "--worker=all", f"--command={command}")


@dataclasses.dataclass(frozen=True)
class Waiting:
    """How ``create`` polls a VM or queued resource that is on its way."""

    poll_seconds: float
    max_wait_seconds: float


def workers_of(accelerator_type: str) -> int:
    """Hosts of a v2/v3/v4 pod slice: v4-32 (32 TensorCores) has 4."""
    match = re.fullmatch(r"v[234]-(\d+)", accelerator_type)
    if not match:
        raise ValueError(f"cannot tell the worker count of {accelerator_type!r}: pass --workers")
    return max(1, int(match.group(1)) // CORES_PER_WORKER)


def vm_state_command(pod: Pod) -> Command:
    return Command(
        pod.gcloud("describe", pod.name, "--format=value(state)"),
        "the TPU VM's state: READY is reused, CREATING awaited, "
        "PREEMPTED or any other deleted and recreated",
    )


def queued_state_command(pod: Pod) -> Command:
    return Command(
        pod.gcloud("describe", pod.name, "--format=value(state.state)", group="queued-resources"),
        "the queued resource's state: on its way is awaited, "
        "SUSPENDED, FAILED or any other deleted and recreated",
    )


def create_command(pod: Pod) -> Command:
    spot = ["--spot"] if pod.spot else []
    if pod.queued:
        argv = pod.gcloud(
            "create",
            pod.name,
            f"--node-id={pod.name}",
            f"--accelerator-type={pod.accelerator_type}",
            f"--runtime-version={pod.version}",
            *spot,
            group="queued-resources",
        )
        return Command(argv, "request the TPU VM as a queued resource, then wait until ACTIVE")
    argv = pod.gcloud(
        "create",
        pod.name,
        f"--accelerator-type={pod.accelerator_type}",
        f"--version={pod.version}",
    )
    return Command(argv + spot, "create the TPU VM, then wait until READY")


def delete_command(pod: Pod) -> Command:
    if pod.queued:
        # --force: a queued resource is deleted with its VM.
        argv = pod.gcloud("delete", pod.name, "--force", "--quiet", group="queued-resources")
        return Command(argv, "delete the queued resource and its TPU VM")
    return Command(pod.gcloud("delete", pod.name, "--quiet"), "delete the TPU VM")


def create_commands(pod: Pod) -> list[Command]:
    """What ``create`` runs when no VM exists yet: the --dry-run listing."""
    looks = [vm_state_command(pod)] + ([queued_state_command(pod)] if pod.queued else [])
    create = dataclasses.replace(create_command(pod), unless_previous_succeeded=True)
    return [*looks, create]


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
        # Every start (a resume after `stop`, a rerun) appends under its own header, so the
        # log keeps the earlier attempts. setsid + nohup: the run survives the ssh session.
        header = 'echo "==== $(date -u +%Y-%m-%dT%H:%M:%SZ) train_flax.py starts ====" '
        remote = (
            prepare
            + f"{header}>> logs/train.log && "
            + f"setsid nohup {train} >> logs/train.log 2>&1 < /dev/null &"
        )
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


def after_training_command(pod: Pod) -> Command:
    return dataclasses.replace(
        vm_state_command(pod),
        why="after training, the TPU VM's state: READY ends the run; PREEMPTED, TERMINATED or "
        "gone means create, setup and the same training command again (--until-done)",
    )


def print_plan(commands: list[Command]) -> None:
    for command in commands:
        fallback = command.unless_previous_succeeded
        print(f"# {command.why}" + "  (only if the previous command failed)" * fallback)
        print(shlex.join(command.argv))


def run(command: Command) -> int:
    print(f"# {command.why}\n{shlex.join(command.argv)}", flush=True)
    return subprocess.run(command.argv, cwd=REPO, check=False).returncode


def execute(commands: list[Command]) -> int:
    """Runs the commands in order; stops at the first failure."""
    for command in commands:
        returncode = run(command)
        if returncode != 0:
            print(f"FAILED (exit {returncode}): {command.why}", file=sys.stderr)
            return returncode
    return 0


def run_or_raise(command: Command) -> None:
    if (returncode := run(command)) != 0:
        raise LaunchError(f"exit {returncode}: {command.why}")


def state_of(command: Command, quiet: bool = False) -> str | None:
    """What a ``describe`` says the state is; None when there is no such resource."""
    if not quiet:
        print(f"# {command.why}\n{shlex.join(command.argv)}", flush=True)
    result = subprocess.run(command.argv, cwd=REPO, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        if "NOT_FOUND" in result.stderr or "not found" in result.stderr.lower():
            return None
        # Auth, quota or a typo in --zone: creating would fail the same way.
        last_line = (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1]
        raise LaunchError(f"{shlex.join(command.argv[:5])} failed: {last_line}")
    state = result.stdout.strip()
    if not quiet:
        print(f"#   -> {state}", flush=True)
    return state


def wait_until_ready(pod: Pod, waiting: Waiting) -> None:
    """Polls the TPU VM (with --queued: its request) until READY (ACTIVE)."""
    command, what, ready, in_progress = (
        (queued_state_command(pod), "queued resource", QUEUED_READY, QUEUED_IN_PROGRESS)
        if pod.queued
        else (vm_state_command(pod), "TPU VM", VM_READY, VM_IN_PROGRESS)
    )
    print(
        f"# wait until the {what} is {ready}, looking every {waiting.poll_seconds:g} s", flush=True
    )
    deadline = time.monotonic() + waiting.max_wait_seconds
    state = state_of(command)
    while state != ready:
        if state not in in_progress:
            raise LaunchError(f"the {what} is {state or 'gone'}, not {ready}: giving up")
        if time.monotonic() > deadline:
            raise LaunchError(
                f"the {what} is still {state} after {waiting.max_wait_seconds:g} s (--max-wait)"
            )
        time.sleep(waiting.poll_seconds)
        previous, state = state, state_of(command, quiet=True)
        if state != previous:
            print(f"#   -> {state or 'gone'}", flush=True)


def provision(pod: Pod, vm_state: str | None, waiting: Waiting) -> None:
    """Leaves a READY TPU VM, given what ``describe`` just said of it (None: no VM)."""
    if vm_state == VM_READY:
        return
    if pod.queued:
        # A queued VM comes and goes with its request: the request's state decides.
        queued_state = state_of(queued_state_command(pod))
        on_its_way, stale = queued_state in QUEUED_IN_PROGRESS, queued_state is not None
    else:
        on_its_way, stale = vm_state in VM_IN_PROGRESS, vm_state is not None
    if not on_its_way:
        if stale:
            run_or_raise(delete_command(pod))
        run_or_raise(create_command(pod))
    wait_until_ready(pod, waiting)


def run_training(pod: Pod, args: argparse.Namespace, waiting: Waiting) -> int:
    """``run``: create, setup, train (again after each preemption with --until-done), logs."""
    attempts = args.max_attempts if args.until_done else 1
    vm_state = state_of(vm_state_command(pod))
    for attempt in range(1, attempts + 1):
        provision(pod, vm_state, waiting)
        if returncode := execute(setup_commands(pod, args.archive, args.data)):
            return returncode
        returncode = run(train_command(pod, args.config, args.train_args, detach=False))
        if not args.until_done:
            break
        # A run stopped by the preemption notice exits TRAINING_PREEMPTED_EXIT, possibly
        # while the VM still reads READY; a VM no longer READY means preempted whatever the
        # exit status (ssh may have lost the workers before they could say so).
        vm_state = state_of(after_training_command(pod))
        if vm_state == VM_READY and returncode != TRAINING_PREEMPTED_EXIT:
            break
        what = (
            "training stopped on a preemption notice"
            if vm_state == VM_READY
            else f"the TPU VM is {vm_state or 'gone'}: recreate it and"
        )
        print(
            f"# attempt {attempt} of {attempts}: {what} rerun; training resumes from its last "
            "checkpoint",
            flush=True,
        )
    else:
        raise LaunchError(
            f"the TPU VM was preempted {attempts} times (--max-attempts): run again to resume "
            "from the last checkpoint"
        )
    # The logs matter most when training failed: fetch them either way.
    logs_returncode = execute(logs_commands(pod, args.log_dir))
    return returncode or logs_returncode


def plan(action: str, pod: Pod, args: argparse.Namespace) -> list[Command]:
    """The commands of an action, as --dry-run prints them (a first run: no VM yet)."""
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
    if action == "delete":
        return [delete_command(pod)]
    train = train_command(pod, args.config, args.train_args, detach=False)
    return [
        *create_commands(pod),
        *setup_commands(pod, args.archive, args.data),
        train,
        *([after_training_command(pod)] if args.until_done else []),
        *logs_commands(pod, args.log_dir),
    ]


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
    parser.add_argument(
        "--queued", action="store_true", help="create/delete through a queued resource"
    )
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
    parser.add_argument(
        "--until-done", action="store_true", help="run: recreate and rerun after preemptions"
    )
    parser.add_argument("--max-attempts", type=int, default=5, help="run --until-done's bound")
    parser.add_argument(
        "--poll-seconds", type=float, default=30.0, help="create: time between state checks"
    )
    parser.add_argument(
        "--max-wait",
        type=float,
        default=6 * 3600.0,
        help="create: seconds to wait for READY/ACTIVE (queued Spot capacity can take hours)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser.add_argument(
        "train_args", nargs="*", metavar="section.field=value", help="train_flax.py overrides"
    )
    # Intermixed: options may follow the action too (`run --until-done -- overrides`).
    args = parser.parse_intermixed_args(argv)
    if args.max_attempts < 1:
        parser.error("--max-attempts must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pod = Pod(
        name=args.name,
        zone=args.zone,
        project=args.project,
        accelerator_type=args.accelerator_type,
        version=args.version,
        spot=args.spot,
        queued=args.queued,
        workers=args.workers or workers_of(args.accelerator_type),
    )
    if args.dry_run:
        print_plan(plan(args.action, pod, args))
        return 0
    if args.action in ("logs", "run"):
        args.log_dir.mkdir(parents=True, exist_ok=True)
    waiting = Waiting(args.poll_seconds, args.max_wait)
    try:
        if args.action == "create":
            provision(pod, state_of(vm_state_command(pod)), waiting)
            return 0
        if args.action == "run":
            return run_training(pod, args, waiting)
        return execute(plan(args.action, pod, args))
    except LaunchError as error:
        print(f"tpu_pod: {error}", file=sys.stderr)
    except FileNotFoundError as error:
        print(f"tpu_pod: {error.filename} not found: install the gcloud CLI", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
