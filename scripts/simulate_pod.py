"""Run train_flax.py as a simulated pod: N processes x M CPU devices on this machine.

    python -m scripts.simulate_pod --processes 4 --devices 4 --log-dir runs/pod/logs -- \\
        --config configs/tiny.py train.workdir=runs/pod train.max_steps=20

Each process gets M simulated CPU devices (set before JAX starts) and joins the others
through a coordinator on 127.0.0.1, exactly as the hosts of a TPU VM pod do, with CPU
collectives (gloo) in place of the chip interconnect. The command prints every process's
exit status and log file, and exits nonzero if any process failed. When one process dies,
the others exit by themselves within ``--heartbeat-timeout`` seconds, naming it; any still
running after a grace period beyond that are stopped and reported as such.

``--kill I`` plays a dead host: it SIGKILLs process I once process 0's log shows
``--kill-after`` (default: the first logged step).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TRAIN_SCRIPT = REPO / "train_flax.py"
DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
# Shorter than on a real pod (kobart_flax.distributed's default): a simulated pod is a test.
HEARTBEAT_TIMEOUT_SECONDS = 30
# Beyond the heartbeat timeout, how long the others may take to exit by themselves after a
# process failed: a loaded machine slows the watchdog's beats and the exit.
FAILURE_GRACE_MARGIN_SECONDS = 30.0
STOP_SECONDS = 10.0  # between SIGTERM and SIGKILL
POLL_SECONDS = 0.2


@dataclasses.dataclass
class ProcessResult:
    process_id: int
    returncode: int | None  # None: still running when stopped by the simulator
    log_path: Path
    stopped: str = ""  # why the simulator stopped it, if it did
    killed: bool = False  # by the simulator's --kill, as a dead host
    ended: float | None = None  # time.monotonic() when its exit was seen

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.stopped

    def describe(self) -> str:
        if self.killed:
            status = "killed by the simulator (SIGKILL, as a dead host)"
        elif self.stopped:
            status = f"stopped by the simulator ({self.stopped})"
        elif self.returncode == 0:
            status = "exit 0"
        elif self.returncode < 0:
            status = f"killed by signal {-self.returncode}"
        else:
            status = f"exit {self.returncode}"
        return f"process {self.process_id}: {status}  (log {self.log_path})"


def free_port() -> int:
    """A port nothing listens on now; the coordinator binds it a moment later."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def process_env(devices: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """The parent's environment with exactly ``devices`` CPU devices and no accelerator."""
    env = dict(os.environ if base is None else base)
    # Drop an inherited device count (pytest's conftest sets one) before adding ours.
    flags = [flag for flag in env.get("XLA_FLAGS", "").split() if DEVICE_COUNT_FLAG not in flag]
    env["XLA_FLAGS"] = " ".join([*flags, f"{DEVICE_COUNT_FLAG}={devices}"])
    env["JAX_NUM_CPU_DEVICES"] = str(devices)
    env["JAX_PLATFORMS"] = "cpu"
    return env


def process_command(
    train_args: list[str],
    processes: int,
    process_id: int,
    coordinator: str,
    heartbeat_timeout: int = HEARTBEAT_TIMEOUT_SECONDS,
) -> list[str]:
    command = [sys.executable, str(TRAIN_SCRIPT), *train_args]
    if processes > 1:
        command += [
            "--coordinator",
            coordinator,
            "--num_processes",
            str(processes),
            "--process_id",
            str(process_id),
            "--heartbeat_timeout",
            str(heartbeat_timeout),
        ]
    return command


@dataclasses.dataclass(frozen=True)
class Kill:
    """SIGKILL one process, as a host that dies, once process 0's log shows ``after``."""

    process_id: int
    after: str = "step 1/"


def run_pod(
    processes: int,
    devices: int,
    train_args: list[str],
    log_dir: Path,
    timeout: float,
    env: dict[str, str] | None = None,
    heartbeat_timeout: int = HEARTBEAT_TIMEOUT_SECONDS,
    kill: Kill | None = None,
) -> list[ProcessResult]:
    """Starts the processes, waits for all of them, returns one result per process."""
    if processes < 1 or devices < 1:
        raise ValueError(f"need at least one process and one device, got {processes} x {devices}")
    if kill is not None and not 0 <= kill.process_id < processes:
        raise ValueError(f"cannot kill process {kill.process_id} of {processes}")
    log_dir.mkdir(parents=True, exist_ok=True)
    coordinator = f"127.0.0.1:{free_port()}"
    running: list[tuple[subprocess.Popen, ProcessResult]] = []
    for process_id in range(processes):
        log_path = log_dir / f"process_{process_id}.log"
        with open(log_path, "w", encoding="utf-8") as log:
            popen = subprocess.Popen(
                process_command(train_args, processes, process_id, coordinator, heartbeat_timeout),
                cwd=REPO,
                env=process_env(devices, env),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        running.append((popen, ProcessResult(process_id, None, log_path)))

    deadline = time.monotonic() + timeout
    grace = heartbeat_timeout + FAILURE_GRACE_MARGIN_SECONDS
    failed_at: float | None = None
    while any(popen.poll() is None for popen, _ in running):
        now = time.monotonic()
        for popen, result in running:
            if result.ended is None and popen.poll() is not None:
                result.ended = now
        if kill is not None and not running[kill.process_id][1].killed:
            _kill_when_logged(running, kill)
        if failed_at is None and any(popen.poll() not in (None, 0) for popen, _ in running):
            failed_at = now
        if now > deadline:
            _stop(running, f"timeout after {timeout:.0f} s")
        elif failed_at is not None and now > failed_at + grace:
            _stop(running, "another process failed")
        time.sleep(POLL_SECONDS)
    for popen, result in running:
        result.returncode = popen.returncode
        if result.ended is None:
            result.ended = time.monotonic()
    return [result for _, result in running]


def _kill_when_logged(running: list[tuple[subprocess.Popen, ProcessResult]], kill: Kill) -> None:
    log = running[0][1].log_path.read_text(encoding="utf-8", errors="replace")
    if kill.after in log:
        popen, result = running[kill.process_id]
        popen.send_signal(signal.SIGKILL)
        result.killed = True


def _stop(running: list[tuple[subprocess.Popen, ProcessResult]], reason: str) -> None:
    """SIGTERM every process still running, then SIGKILL what is left after a while."""
    alive = [(popen, result) for popen, result in running if popen.poll() is None]
    for popen, result in alive:
        result.stopped = reason
        popen.terminate()
    for popen, _ in alive:
        try:
            popen.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()


def log_tail(path: Path, lines: int = 15) -> str:
    return "".join(path.read_text(encoding="utf-8", errors="replace").splitlines(True)[-lines:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        usage="%(prog)s [options] -- TRAIN_FLAX_ARGS...",
    )
    parser.add_argument("--processes", type=int, default=4, help="processes (hosts); default 4")
    parser.add_argument(
        "--devices", type=int, default=4, help="CPU devices per process (chips per host); default 4"
    )
    parser.add_argument("--log-dir", type=Path, default=Path("runs/simulated_pod/logs"))
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds for the whole run")
    parser.add_argument(
        "--heartbeat-timeout",
        type=int,
        default=HEARTBEAT_TIMEOUT_SECONDS,
        help="seconds after which a silent process is taken for dead by the others; "
        f"default {HEARTBEAT_TIMEOUT_SECONDS}",
    )
    parser.add_argument(
        "--kill", type=int, metavar="I", help="SIGKILL process I during training (a dead host)"
    )
    parser.add_argument(
        "--kill-after",
        default=Kill.after,
        metavar="TEXT",
        help=f"kill once process 0's log shows TEXT; default {Kill.after!r}",
    )
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="arguments of train_flax.py")
    args = parser.parse_args(argv)
    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args

    kill = None if args.kill is None else Kill(args.kill, args.kill_after)
    results = run_pod(
        args.processes,
        args.devices,
        train_args,
        args.log_dir,
        args.timeout,
        heartbeat_timeout=args.heartbeat_timeout,
        kill=kill,
    )
    for result in results:
        print(result.describe())
        if not result.ok:
            print("  " + log_tail(result.log_path).replace("\n", "\n  "))
    failed = [result.process_id for result in results if not result.ok]
    if failed:
        print(f"FAILED: processes {failed} of {args.processes}")
        return 1
    print(f"all {args.processes} processes finished")
    return 0


if __name__ == "__main__":
    sys.exit(main())
