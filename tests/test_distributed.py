"""Joining a cluster: options from flags and environment, timeouts, topology checks."""

import argparse
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kobart_flax import distributed
from kobart_flax.config import ConfigError
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
    }
    assert parse(environ=environ) == ClusterOptions("10.0.0.2:1234", 4, 3, 60)
    assert parse("--process_id", "1", "--init_timeout", "5", environ=environ) == ClusterOptions(
        "10.0.0.2:1234", 4, 1, 5
    )
    assert parse() == ClusterOptions(None, None, None, distributed.DEFAULT_TIMEOUT_SECONDS)
    with pytest.raises(DistributedError, match="KOBART_NUM_PROCESSES='four': expected int"):
        parse(environ={"KOBART_NUM_PROCESSES": "four"})


def test_incomplete_or_impossible_clusters_are_refused():
    with pytest.raises(DistributedError, match="need --coordinator HOST:PORT"):
        distributed.initialize(ClusterOptions(num_processes=4, process_id=1))
    with pytest.raises(DistributedError, match="needs --num_processes and --process_id"):
        distributed.initialize(ClusterOptions("127.0.0.1:1234", num_processes=2))
    with pytest.raises(DistributedError, match=r"--process_id=2: must be in \[0, 2\)"):
        distributed.initialize(ClusterOptions("127.0.0.1:1234", 2, 2))


def test_tpu_vms_join_automatically_and_plain_machines_run_alone(monkeypatch):
    calls = []
    monkeypatch.setattr(distributed.jax.distributed, "initialize", lambda **kw: calls.append(kw))

    monkeypatch.setattr(distributed, "running_on_tpu_vm", lambda: False)
    distributed.initialize(ClusterOptions())
    assert calls == []

    monkeypatch.setattr(distributed, "running_on_tpu_vm", lambda: True)
    distributed.initialize(ClusterOptions(timeout_seconds=60))
    # JAX's own timeout comes later than ours: ours is the one with a readable message.
    assert calls == [{"initialization_timeout": 60 + distributed.JAX_TIMEOUT_MARGIN_SECONDS}]


@pytest.mark.parametrize("process_id", [0, 1])
def test_a_peer_that_never_arrives_fails_with_a_readable_message(process_id):
    coordinator = f"127.0.0.1:{free_port()}"
    command = [sys.executable, "train_flax.py", "--config", "configs/tiny.py"]
    command += ["--coordinator", coordinator, "--num_processes", "2"]
    command += ["--process_id", str(process_id), "--init_timeout", "2"]
    start = time.monotonic()
    result = subprocess.run(
        command, cwd=REPO, env=process_env(1), capture_output=True, text=True, timeout=60
    )
    assert time.monotonic() - start < 30
    assert result.returncode == distributed.JOIN_FAILED_EXIT_CODE, result.stderr
    assert (
        f"process {process_id}: could not join the coordinator at {coordinator} within 2 s: "
        "not every process of 2 arrived" in result.stderr
    )
    assert "Check failure stack trace" not in result.stderr


def test_wrong_topology_names_what_the_config_expects():
    distributed.check_topology(1, 2)  # this test session: 1 process, 2 CPU devices
    distributed.check_topology(0, 0)
    with pytest.raises(
        ConfigError,
        match=r"expects 4 processes \(this run has 1\) and 16 devices \(this run has 2\), on cpu",
    ):
        distributed.check_topology(4, 16)
