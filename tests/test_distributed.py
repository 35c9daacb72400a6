"""Joining a cluster: options from flags and environment, timeouts, topology checks."""

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from timeouts import scaled_timeout

from kobart_flax import distributed
from kobart_flax.distributed import ClusterOptions, DistributedError
from scripts.simulate_pod import free_port, process_env

REPO = Path(__file__).resolve().parent.parent


def parse(*flags: str, environ: dict[str, str] | None = None) -> ClusterOptions:
    parser = argparse.ArgumentParser()
    distributed.add_arguments(parser)
    return distributed.options_from(parser.parse_args(list(flags)), environ or {})


def test_flags_win_over_environment_variables():
    environ = {
        "KOBART_COORDINATOR": "10.0.0.2:1234",
        "KOBART_NUM_PROCESSES": "4",
        "KOBART_PROCESS_ID": "3",
        "KOBART_INIT_TIMEOUT": "60",
        "KOBART_HEARTBEAT_TIMEOUT": "20",
    }
    assert parse(environ=environ) == ClusterOptions("10.0.0.2:1234", 4, 3, 60, 20)
    flags = ("--process_id", "1", "--init_timeout", "5", "--heartbeat_timeout", "9")
    assert parse(*flags, environ=environ) == ClusterOptions("10.0.0.2:1234", 4, 1, 5, 9)
    assert parse() == ClusterOptions(
        None,
        None,
        None,
        distributed.DEFAULT_TIMEOUT_SECONDS,
        distributed.DEFAULT_HEARTBEAT_TIMEOUT_SECONDS,
    )
    with pytest.raises(DistributedError, match="KOBART_NUM_PROCESSES='four': expected int"):
        parse(environ={"KOBART_NUM_PROCESSES": "four"})


def test_incomplete_or_impossible_clusters_are_refused():
    with pytest.raises(DistributedError, match="need --coordinator HOST:PORT"):
        distributed.initialize(ClusterOptions(num_processes=4, process_id=1))
    with pytest.raises(DistributedError, match="needs --num_processes and --process_id"):
        distributed.initialize(ClusterOptions("127.0.0.1:1234", num_processes=2))
    with pytest.raises(DistributedError, match=r"--process_id=2: must be in \[0, 2\)"):
        distributed.initialize(ClusterOptions("127.0.0.1:1234", 2, 2))
    with pytest.raises(DistributedError, match="heartbeat timeout must be positive, got 0"):
        distributed.initialize(ClusterOptions(heartbeat_timeout_seconds=0))


def test_tpu_vms_join_automatically_and_plain_machines_run_alone(monkeypatch):
    calls = []
    monkeypatch.setattr(distributed.jax.distributed, "initialize", lambda **kw: calls.append(kw))

    monkeypatch.setattr(distributed, "running_on_tpu_vm", lambda: False)
    distributed.initialize(ClusterOptions())
    assert calls == []

    monkeypatch.setattr(distributed, "running_on_tpu_vm", lambda: True)
    distributed.initialize(ClusterOptions(timeout_seconds=60, heartbeat_timeout_seconds=20))
    # JAX's own timeouts come later than ours: ours are the ones with a readable message.
    margin = distributed.JAX_TIMEOUT_MARGIN_SECONDS
    assert calls == [
        {"initialization_timeout": 60 + margin, "heartbeat_timeout_seconds": 20 + margin}
    ]


@pytest.mark.slow  # a train_flax.py subprocess
@pytest.mark.parametrize("process_id", [0, 1])
def test_a_peer_that_never_arrives_fails_with_a_readable_message(process_id):
    coordinator = f"127.0.0.1:{free_port()}"
    command = [sys.executable, "train_flax.py", "--config", "configs/tiny.py"]
    command += ["--coordinator", coordinator, "--num_processes", "2"]
    command += ["--process_id", str(process_id), "--init_timeout", "2"]
    start = time.monotonic()
    result = subprocess.run(
        command,
        cwd=REPO,
        env=process_env(1),
        capture_output=True,
        text=True,
        timeout=scaled_timeout(60),
    )
    # Far sooner than JAX's own minutes-long wait, however busy the machine.
    assert time.monotonic() - start < scaled_timeout(30)
    assert result.returncode == distributed.JOIN_FAILED_EXIT_CODE, result.stderr
    assert (
        f"process {process_id}: could not join the coordinator at {coordinator} within 2 s: "
        "not every process of 2 arrived" in result.stderr
    )
    assert "Check failure stack trace" not in result.stderr


class FakeStore:
    """The coordination service's key-value store, as jaxlib's client offers it."""

    def __init__(self):
        self.values: dict[str, str] = {}
        self.reachable = True

    def key_value_set(self, key: str, value: str, allow_overwrite: bool = False) -> None:
        self._answer()
        assert allow_overwrite or key not in self.values
        self.values[key] = value

    def key_value_dir_get(self, prefix: str) -> list[tuple[str, str]]:
        self._answer()
        return [(key, value) for key, value in self.values.items() if key.startswith(prefix)]

    def _answer(self) -> None:
        if not self.reachable:
            raise RuntimeError("UNAVAILABLE: Failed to send RPC to coordination service")


@pytest.fixture
def exits(monkeypatch):
    """The messages of watchdogs that would exit; their threads wait in place of os._exit
    until the test has stopped the watchdogs."""
    messages: list[str] = []
    lock = threading.Lock()
    released = threading.Event()

    def record(message: str) -> None:
        with lock:
            messages.append(message)
        released.wait()

    monkeypatch.setattr(distributed, "_exit_now", record)
    monkeypatch.setattr(distributed.atexit, "register", lambda hook: None)
    yield messages
    released.set()


def watch(store: FakeStore, process_id: int, processes: int) -> distributed.PeerWatchdog:
    watchdog = distributed.PeerWatchdog(store, process_id, processes, timeout_seconds=1)
    watchdog.start()
    return watchdog


def wait_for(messages: list[str], count: int) -> None:
    deadline = time.monotonic() + scaled_timeout(10)
    while len(messages) < count and time.monotonic() < deadline:
        time.sleep(0.05)


def test_a_silent_peer_is_named_by_every_live_one_and_process_0_leaves_last(exits):
    """Process 2 of 3 never beats; 0 and 1 both name it, and 1 is out before 0 takes the
    store (process 0's) down with it."""
    store = FakeStore()
    watchdogs = [watch(store, process_id, 3) for process_id in (0, 1)]
    start = time.monotonic()
    wait_for(exits, 2)
    for watchdog in watchdogs:
        watchdog.stopped.set()
    assert 1 < time.monotonic() - start < 5
    assert exits == [
        f"process 2 of 3 stopped responding (no heartbeat for 1 s, --heartbeat_timeout): "
        f"process {process_id} exits too; rerun the command to resume from the last checkpoint"
        for process_id in (1, 0)
    ]
    assert store.values["kobart_flax/lost/1"] == "process 2 of 3"


def test_a_store_that_stops_answering_means_process_0_is_lost(exits):
    store = FakeStore()
    watchdog = watch(store, 1, 2)
    store.key_value_set("kobart_flax/heartbeat/0", "1")
    time.sleep(0.5)
    store.reachable = False
    wait_for(exits, 1)
    watchdog.stopped.set()
    assert exits == [
        "process 0 of 2 (the coordinator) stopped responding (no heartbeat for 1 s, "
        "--heartbeat_timeout): process 1 exits too; rerun the command to resume from the last "
        "checkpoint"
    ]
