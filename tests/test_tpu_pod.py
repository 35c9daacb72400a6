"""The TPU pod launcher's commands, checked through --dry-run."""

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from scripts import tpu_pod

REPO = Path(__file__).resolve().parent.parent
POD = ["--name", "kobart", "--zone", "us-central2-b", "--project", "my-project"]
GCLOUD_TPU = ["gcloud", "compute", "tpus", "tpu-vm"]
WHERE = ["--zone=us-central2-b", "--project=my-project"]


def dry_run(*args: str) -> list[tuple[str, list[str]]]:
    """(comment, argv) of every command the launcher prints."""
    output = subprocess.run(
        [sys.executable, "-m", "scripts.tpu_pod", *POD, "--dry-run", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert len(output) % 2 == 0 and all(line.startswith("# ") for line in output[::2]), output
    return [
        (comment[2:], shlex.split(command))
        for comment, command in zip(output[::2], output[1::2], strict=True)
    ]


def test_run_creates_sets_up_trains_on_all_workers_and_gathers_logs():
    commands = dry_run("run", "--", "train.workdir=gs://bucket/run 1", "train.max_steps=100")
    argvs = [argv for _, argv in commands]

    assert argvs[0] == [*GCLOUD_TPU, "describe", "kobart", "--format=value(state)", *WHERE]
    assert commands[1][0].endswith("(only if the previous command failed)")
    assert argvs[1] == [
        *GCLOUD_TPU,
        "create",
        "kobart",
        "--accelerator-type=v4-32",
        "--version=tpu-ubuntu2204-base",
        *WHERE,
    ]
    pack = argvs[2]
    assert pack[:4] == ["bash", "-o", "pipefail", "-c"]
    assert pack[4].startswith("git ls-files -z --cached --others --exclude-standard -- kobart_flax")
    assert pack[4].endswith("| tar --null --files-from=- -czf /tmp/kobart-flax.tar.gz")
    assert argvs[3] == [
        *GCLOUD_TPU,
        "scp",
        "/tmp/kobart-flax.tar.gz",
        "kobart:~/kobart-flax.tar.gz",
        "--worker=all",
        *WHERE,
    ]
    assert argvs[4][:7] == [*GCLOUD_TPU, "ssh", "kobart", "--worker=all"]
    assert argvs[4][7] == (
        "--command=mkdir -p ~/kobart-flax && tar -xzf ~/kobart-flax.tar.gz -C ~/kobart-flax "
        "&& cd ~/kobart-flax && scripts/setup_env.sh requirements-tpu.txt"
    )
    assert argvs[5] == [
        *GCLOUD_TPU,
        "scp",
        "data/train.tsv",
        "data/test.tsv",
        "kobart:~/kobart-flax/data/",
        "--worker=all",
        *WHERE,
    ]

    train = argvs[6]
    assert train[:7] == [*GCLOUD_TPU, "ssh", "kobart", "--worker=all"] and train[8:] == WHERE
    remote = train[7].removeprefix("--command=")
    assert remote.startswith("cd ~/kobart-flax && mkdir -p logs && set -o pipefail && ")
    run_part, tee = remote.split(" && ")[-1].split(" 2>&1 | ")
    assert tee == "tee logs/train.log"
    # The overrides reach train_flax.py intact, spaces included.
    assert shlex.split(run_part) == [
        ".venv/bin/python",
        "train_flax.py",
        "--config",
        "configs/kobart_base.py",
        "train.workdir=gs://bucket/run 1",
        "train.max_steps=100",
    ]

    logs = argvs[7:]
    assert logs == [
        [
            *GCLOUD_TPU,
            "scp",
            "kobart:~/kobart-flax/logs/train.log",
            f"runs/pod_logs/worker_{worker}.log",
            f"--worker={worker}",
            *WHERE,
        ]
        for worker in range(4)
    ]


def test_detached_training_spot_vm_and_no_data_copy():
    create = dry_run("create", "--spot", "--accelerator-type", "v4-64")[1][1]
    assert create == [
        *GCLOUD_TPU,
        "create",
        "kobart",
        "--accelerator-type=v4-64",
        "--version=tpu-ubuntu2204-base",
        *WHERE,
        "--spot",
    ]

    setup = [argv for _, argv in dry_run("setup", "--data")]
    assert not any("data/train.tsv" in argv for argv in setup)

    ((_, train),) = dry_run("train", "--detach", "--config", "configs/tiny.py")
    remote = train[7].removeprefix("--command=")
    assert "setsid nohup .venv/bin/python train_flax.py --config configs/tiny.py" in remote
    assert remote.endswith("> logs/train.log 2>&1 < /dev/null &")

    ((_, stop),) = dry_run("stop")
    assert stop[7] == "--command=pkill -TERM -f '[t]rain_flax.py' || true"
    ((_, delete),) = dry_run("delete")
    assert delete == [*GCLOUD_TPU, "delete", "kobart", "--quiet", *WHERE]


@pytest.mark.parametrize(("accelerator", "workers"), [("v4-8", 1), ("v4-32", 4), ("v3-128", 16)])
def test_worker_count_from_the_accelerator_type(accelerator, workers):
    assert tpu_pod.workers_of(accelerator) == workers


def test_unknown_accelerator_needs_workers():
    with pytest.raises(ValueError, match="pass --workers"):
        tpu_pod.workers_of("v5litepod-16")


def test_create_or_reuse_skips_create_when_describe_succeeds(monkeypatch):
    ran = []

    def fake_run(argv, cwd, check):
        ran.append(argv)
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(tpu_pod.subprocess, "run", fake_run)
    assert tpu_pod.main([*POD, "create"]) == 0
    assert [argv[4] for argv in ran] == ["describe"]

    ran.clear()

    def describe_fails(argv, cwd, check):
        ran.append(argv)
        return subprocess.CompletedProcess(argv, 1 if argv[4] == "describe" else 0)

    monkeypatch.setattr(tpu_pod.subprocess, "run", describe_fails)
    assert tpu_pod.main([*POD, "create"]) == 0
    assert [argv[4] for argv in ran] == ["describe", "create"]
