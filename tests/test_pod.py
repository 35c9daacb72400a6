"""A simulated v4-32 (4 processes x 4 CPU devices) computes what one device computes.

Each run is ``train_flax.py`` started by ``scripts/simulate_pod.py``; the per-step train
losses and the final evaluation loss come from the history its last checkpoint records.
Gloo (CPU collectives) has had wrong-result bugs, so these compare numbers, not just exit
codes.
"""

from pathlib import Path

import numpy as np
import pytest
from timeouts import scaled_timeout

from kobart_flax import checkpoint, distributed
from scripts import simulate_pod

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample"
STEPS = 3
# Generous: a 240 s bound tripped on a busy 2-core machine, where a run takes 35-45 s alone.
RUN_TIMEOUT = 900.0

# Every test here runs train_flax.py in simulated multi-process pods.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def train_args(tmp_path_factory) -> list[str]:
    """A tiny float32 model without dropout on a slice of the sample: a few seconds a step."""
    data = tmp_path_factory.mktemp("pod_data")
    # 13 eval rows: the one eval batch of 16 ends in 3 zero-weight rows, all on the last host.
    for name, rows in (("train.tsv", 96), ("test.tsv", 13)):
        lines = (SAMPLE / name).read_text(encoding="utf-8").splitlines(keepends=True)
        (data / name).write_text("".join(lines[: rows + 1]), encoding="utf-8")
    return [
        "--config",
        "configs/tiny.py",
        f"data.train_path={data / 'train.tsv'}",
        f"data.eval_path={data / 'test.tsv'}",
        "model.d_model=32",
        "model.ffn_dim=64",
        "model.attention_heads=4",
        "model.encoder_layers=1",
        "model.decoder_layers=1",
        "model.dropout=0.0",
        "model.dtype=float32",
        # One bucket each: one compile of each step.
        "data.max_source_length=64",
        "data.source_buckets=64",
        "data.max_target_length=32",
        "data.target_buckets=32",
        "train.batch_size=16",  # the global batch of every run below
        f"train.max_steps={STEPS}",
        "train.log_every=1",
        "train.eval_every=0",
        "train.eval_max_batches=0",
        "train.checkpoint_every=0",
        "train.keep_best=0",
        "train.rouge_every=0",  # generation is tested elsewhere; here it would only cost time
        "train.learning_rate=1e-3",
    ]


def train(workdir: Path, processes: int, devices: int, args: list[str]) -> list[float]:
    """Per-step losses, then the final eval loss, of one simulated run; fails the test with
    every failed log's tail."""
    results = simulate_pod.run_pod(
        processes,
        devices,
        [*args, f"train.workdir={workdir}"],
        workdir / "logs",
        scaled_timeout(RUN_TIMEOUT),
    )
    failed = [result for result in results if not result.ok]
    assert not failed, "\n".join(
        f"{result.describe()}\n{simulate_pod.log_tail(result.log_path)}" for result in failed
    )
    history = checkpoint.read_history(workdir / "checkpoints")
    losses = history["train_losses"]
    assert len(losses) == STEPS and np.all(np.isfinite(losses))
    [(step, metrics)] = history["evaluations"]
    assert step == STEPS
    return [*losses, metrics["eval_loss"]]


@pytest.fixture(scope="module")
def single_device_losses(train_args, tmp_path_factory) -> list[float]:
    return train(tmp_path_factory.mktemp("one_device"), 1, 1, train_args)


@pytest.mark.parametrize(
    "mesh",
    [
        pytest.param(["mesh.data=16"], id="data_parallel"),
        # Params and Adam moments split 16 ways, across all four hosts.
        pytest.param(["mesh.data=1", "mesh.fsdp=16"], id="fsdp"),
        # Heads and FFN split over a host's 4 devices, params over 2 hosts, batch over 4.
        pytest.param(["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=4"], id="tensor_fsdp_data"),
    ],
)
def test_pod_losses_equal_one_host_and_one_device(mesh, train_args, single_device_losses, tmp_path):
    args = [*train_args, *mesh]
    pod = train(tmp_path / "pod", 4, 4, args)
    one_host = train(tmp_path / "one_host", 1, 16, args)

    np.testing.assert_allclose(pod, one_host, rtol=1e-5)
    np.testing.assert_allclose(pod, single_device_losses, rtol=1e-5)
    assert len(set(pod[:STEPS])) == STEPS  # the params changed between steps
    log = (tmp_path / "pod" / "logs" / "process_0.log").read_text(encoding="utf-8")
    sizes = dict(override.removeprefix("mesh.").split("=") for override in mesh)
    expected_mesh = " x ".join(
        f"{axis}={sizes.get(axis, '1')}" for axis in ("data", "fsdp", "tensor")
    )
    assert f"mesh {expected_mesh} over 16 devices of 4 processes" in log
    # Only process 0 tells the story; the others would repeat it.
    other = (tmp_path / "pod" / "logs" / "process_1.log").read_text(encoding="utf-8")
    assert "step 1/" in log and "step 1/" not in other


def test_a_config_for_16_devices_stops_at_once_on_8(tmp_path):
    """configs/kobart_base.py wants a v4-32; on 2 hosts x 4 devices every host says so."""
    results = simulate_pod.run_pod(
        2,
        4,
        ["--config", "configs/kobart_base.py", f"train.workdir={tmp_path / 'run'}"],
        tmp_path / "logs",
        timeout=scaled_timeout(60.0),
    )
    for result in results:
        assert result.returncode == 2 and not result.stopped, result.describe()
        log = result.log_path.read_text(encoding="utf-8")
        assert (
            "the config expects 4 processes (this run has 2) and 16 devices (this run has 8), "
            "on cpu"
        ) in log
        assert "Traceback" not in log


def test_pod_rouge_covers_the_whole_sample_once(train_args, tmp_path):
    """Each of 2 hosts summarizes half the ROUGE sample; the sums add up over the hosts."""
    args = [
        *train_args,
        "train.rouge_every=3",
        "train.rouge_tokenization=character",
        "decoding.num_beams=2",
        "decoding.max_length=8",
        "decoding.batch_size=4",
    ]
    metrics = {}
    for name, processes, devices in (("pod", 2, 2), ("one_device", 1, 1)):
        train(tmp_path / name, processes, devices, args)
        [(_, metrics[name])] = checkpoint.read_history(tmp_path / name / "checkpoints")[
            "evaluations"
        ]
    assert {"rouge1", "rouge2", "rougeL"} <= metrics["pod"].keys()
    for name in ("rouge1", "rouge2", "rougeL"):
        assert metrics["pod"][name] == pytest.approx(metrics["one_device"][name], rel=1e-6)
    assert 0.0 < metrics["pod"]["rouge1"] < 1.0
    log = (tmp_path / "pod" / "logs" / "process_0.log").read_text(encoding="utf-8")
    assert "ROUGE on 13 eval examples (generated over 4 devices, 7 scored on this host)" in log


def test_packed_rows_on_a_pod_give_the_one_device_losses(train_args, tmp_path):
    """Each of 2 hosts reads its half of every batch of packed rows."""
    args = [
        *train_args,
        "data.packing=true",
        "data.packed_source_length=128",
        "data.packed_target_length=64",
        "train.batch_size=8",  # rows
    ]
    pod = train(tmp_path / "pod", 2, 2, args)
    one_device = train(tmp_path / "one_device", 1, 1, args)
    np.testing.assert_allclose(pod, one_device, rtol=1e-5)
    assert len(set(pod[:STEPS])) == STEPS
    log = (tmp_path / "pod" / "logs" / "process_0.log").read_text(encoding="utf-8")
    assert "96 examples packed into" in log


def test_a_dead_process_takes_the_others_down_with_one_line(train_args, tmp_path):
    """SIGKILL one of 3 hosts mid-training: process 0 (the coordinator) and process 1 exit by
    themselves within the heartbeat timeout, naming it, instead of waiting in a collective."""
    heartbeat_timeout = 15
    args = [
        *train_args,
        f"train.workdir={tmp_path / 'run'}",
        "train.batch_size=12",  # 4 rows per host
        "train.max_steps=100000",  # still training when the kill comes
        "train.num_epochs=100000",
    ]
    results = simulate_pod.run_pod(
        3,
        1,
        args,
        tmp_path / "logs",
        scaled_timeout(RUN_TIMEOUT),
        heartbeat_timeout=heartbeat_timeout,
        kill=simulate_pod.Kill(2, after="step 2/"),
    )
    dead, *survivors = [results[2], results[0], results[1]]
    assert dead.killed, dead.describe()
    for result in survivors:
        log = result.log_path.read_text(encoding="utf-8")
        assert result.returncode == distributed.PEER_LOST_EXIT_CODE and not result.stopped, (
            f"{result.describe()}\n{simulate_pod.log_tail(result.log_path)}"
        )
        # The bound, plus one beat and a margin for exiting on a loaded machine.
        assert result.ended - dead.ended < heartbeat_timeout + scaled_timeout(15), result.describe()
        last_line = log.strip().splitlines()[-1]
        assert (
            f"[process {result.process_id}] " in last_line
            and f"process 2 of 3 stopped responding (no heartbeat for {heartbeat_timeout} s, "
            f"--heartbeat_timeout): process {result.process_id} exits too"
            in last_line
        ), log[-3000:]
        assert "Check failure stack trace" not in log


def test_pod_accumulation_equals_one_device_stepping_over_the_whole_batch(train_args, tmp_path):
    """4 hosts x 4 devices, 32 rows a step in 2 micro-batches of 16 (one row per device
    each) against one device taking all 32 at once."""
    args = [*train_args, "train.batch_size=32", "mesh.data=16"]
    accumulated = train(tmp_path / "accumulated", 4, 4, [*args, "train.grad_accum_steps=2"])
    whole_batch = train(tmp_path / "whole_batch", 1, 1, [*args, "mesh.data=1"])

    np.testing.assert_allclose(accumulated, whole_batch, rtol=1e-5)
    assert len(set(accumulated[:STEPS])) == STEPS
