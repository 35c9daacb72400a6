"""Generation over a mesh gives the tokens of generation on one device.

The batch is split over the mesh's batch axes and the params stay in their training
shardings, so XLA partitions the whole search; rows are independent, so every token must
equal the one-device run. In this process (2 devices), then in fresh processes: 8 devices,
and a simulated pod of 2 processes x 2 devices.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from timeouts import scaled_timeout
from tiny_models import SAMPLE, SAMPLE_TOKENIZER, tiny_kobart_config

from kobart_flax import FlaxBartForConditionalGeneration, sharding
from kobart_flax.summarize import Summarizer
from kobart_flax.tokenization import load_tokenizer
from scripts import simulate_pod

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
WORKER = TESTS / "sharded_generation_worker.py"
WORKER_TIMEOUT = 600


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(str(SAMPLE_TOKENIZER))


@pytest.fixture(scope="module")
def model(tokenizer):
    return FlaxBartForConditionalGeneration(tiny_kobart_config(len(tokenizer)), seed=3)


@pytest.fixture(scope="module")
def texts():
    lines = (SAMPLE / "test.tsv").read_text(encoding="utf-8").splitlines()[1:6]
    return [line.split("\t")[0] for line in lines]


def summarizer(model, tokenizer, num_beams, mesh=None):
    settings = model.generation_settings(num_beams=num_beams, max_length=10)
    return Summarizer(
        model.module,
        tokenizer,
        settings,
        batch_size=3,
        max_source_length=64,
        source_buckets=(64,),
        mesh=mesh,
    )


@pytest.fixture(scope="module")
def one_device(model, tokenizer, texts):
    """By num_beams: (the unsharded Summarizer, its tokens of ``texts``)."""
    runs = {}
    for num_beams in (1, 2):
        unsharded = summarizer(model, tokenizer, num_beams)
        runs[num_beams] = unsharded, unsharded.generate_tokens(model.params, texts)
    return runs


@pytest.mark.parametrize("num_beams", [1, 2])
@pytest.mark.parametrize("fsdp", [1, 2], ids=["data", "fsdp"])
def test_two_devices_give_the_one_device_tokens(
    model, tokenizer, texts, one_device, num_beams, fsdp
):
    mesh = sharding.make_mesh({"data": 2 // fsdp, "fsdp": fsdp, "tensor": 1})
    sharded = summarizer(model, tokenizer, num_beams, mesh)

    tokens = sharded.generate_tokens(model.params, texts)

    assert sharded.batch_size == 4, "3 rounded up to the 2 batch shards"
    unsharded, expected = one_device[num_beams]
    np.testing.assert_array_equal(tokens, expected)
    # Summaries that differ between articles: the model reads its input.
    assert len({tuple(row) for row in tokens}) > 1
    if fsdp == 2 and num_beams == 2:  # once: the text path decodes the same tokens
        assert sharded.summarize(model.params, texts) == unsharded.summarize(model.params, texts)


def test_params_keep_their_training_shardings(model):
    """Already-placed params are used as they are: no copy, no gather."""
    mesh = sharding.make_mesh({"data": 1, "fsdp": 2, "tensor": 1})
    shardings = sharding.state_shardings(model.params, mesh)
    placed = sharding.place(model.params, shardings)
    embedding = placed["model"]["shared"]["embedding"]
    assert len(embedding.addressable_shards) == 2
    assert embedding.addressable_shards[0].data.shape[0] == embedding.shape[0] // 2

    again = sharding.place(placed, shardings)

    assert all(a is b for a, b in zip(jax.tree.leaves(placed), jax.tree.leaves(again), strict=True))


def run_workers(tmp_path: Path, processes: int, devices: int) -> list[dict]:
    """Each worker process's JSON (see sharded_generation_worker.py); fails with its output."""
    env = simulate_pod.process_env(devices)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(TESTS)])
    coordinator = f"127.0.0.1:{simulate_pod.free_port()}"
    running = []
    for process_id in range(processes):
        command = [sys.executable, str(WORKER), "--out", str(tmp_path / f"{process_id}.json")]
        if processes > 1:
            command += ["--coordinator", coordinator, "--num-processes", str(processes)]
            command += ["--process-id", str(process_id)]
        running.append(
            subprocess.Popen(
                command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
        )
    for process_id, process in enumerate(running):
        output, _ = process.communicate(timeout=scaled_timeout(WORKER_TIMEOUT))
        assert process.returncode == 0, f"process {process_id}:\n{output.decode()[-3000:]}"
    return [json.loads((tmp_path / f"{i}.json").read_text()) for i in range(processes)]


def assert_meshes_match_one_device(result: dict, meshes: set[str]) -> None:
    assert set(result["meshes"]) == meshes
    for mesh, tokens in result["meshes"].items():
        assert tokens == result["reference"], f"mesh {mesh} (data x fsdp x tensor)"
    assert len({tuple(row) for row in result["reference"]}) > 1


@pytest.mark.slow  # a worker subprocess with 8 devices
def test_eight_devices_give_the_one_device_tokens(tmp_path):
    [result] = run_workers(tmp_path, processes=1, devices=8)
    assert_meshes_match_one_device(result, {"8x1x1", "2x2x2"})


@pytest.mark.slow
def test_a_two_process_pod_gives_every_host_the_one_device_tokens(tmp_path):
    results = run_workers(tmp_path, processes=2, devices=2)
    for result in results:
        assert_meshes_match_one_device(result, {"4x1x1", "1x2x2"})
    assert results[0] == results[1]
